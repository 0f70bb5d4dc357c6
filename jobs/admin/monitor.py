"""The operator's task monitor in the admin: counts by status per session, live.

Staff only (``admin.site.admin_view``: login redirect, staff check, CSRF on POST). The page
polls a JSON endpoint every two seconds; its buttons call the same services as the REST API
(``jobs.services.control``), with the operator as the stamped actor. Its retention form counts
first (a dry run) and deletes only after a confirmation stating that count
(``jobs.services.retention.retention_run``, as ``POST /api/v1/jobs/cleanup``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_POST

from common.errors import DomainError
from jobs.models import Job, JobStatus
from jobs.selectors import OPEN_STATUSES, sessions_active, sessions_summarize
from jobs.services.control import jobs_cancel, session_pause, session_resume
from jobs.services.retention import retention_run

# Unfinished jobs listed (and linked) per session on the page.
JOBS_LISTED_PER_SESSION = 10


def monitor_snapshot() -> dict[str, Any]:
    """Everything the page shows: sessions with counts, pause state and their open jobs."""
    summaries = sessions_summarize(keys=sessions_active())
    rows: list[dict[str, Any]] = []
    for summary in summaries:
        row = summary.as_dict()
        open_jobs = (
            Job.objects.filter(principal_id=summary.principal_id, session_id=summary.session_id,
                               status__in=OPEN_STATUSES)
            .order_by("-priority", "created_at")
            .values("id", "job_type", "status", "priority")[:JOBS_LISTED_PER_SESSION]
        )
        row["jobs"] = [
            {**j, "url": reverse("admin:jobs_job_change", args=[j["id"]])} for j in open_jobs
        ]
        row["jobs_url"] = (
            f"{reverse('admin:jobs_job_changelist')}?q={summary.session_id}"
        )
        rows.append(row)
    totals = {s: sum(r["counts"][s] for r in rows) for s in JobStatus.values}
    return {
        "statuses": list(JobStatus.values),
        "sessions": rows,
        "totals": totals,
        "pending_approvals": sum(r["pending_approvals"] for r in rows),
    }


@require_GET
def monitor_page(request: HttpRequest) -> HttpResponse:
    context = {**admin.site.each_context(request), "title": "Task monitor", "subtitle": None,
               "retention_days": settings.JOBS_RETENTION_DAYS or 30}
    return TemplateResponse(request, "admin/jobs/monitor.html", context)


@require_GET
def monitor_data(request: HttpRequest) -> JsonResponse:
    return JsonResponse(monitor_snapshot())


@require_POST
def monitor_action(request: HttpRequest) -> JsonResponse:
    action = request.POST.get("action", "")
    session_id = request.POST.get("session_id", "")
    try:
        principal_id = int(request.POST.get("principal_id", ""))
    except ValueError:
        return JsonResponse({"code": "invalid_request", "detail": "principal_id is required"}, status=400)
    if not session_id:
        return JsonResponse({"code": "invalid_request", "detail": "session_id is required"}, status=400)
    actor = f"operator:{request.user.get_username()}"
    if action == "cancel":
        jobs = Job.objects.filter(principal_id=principal_id, session_id=session_id)
        return JsonResponse(jobs_cancel(jobs=jobs, actor=actor, reason="operator_cancel").as_dict())
    if action == "pause":
        session_pause(principal_id=principal_id, session_id=session_id)
        return JsonResponse({"paused": True})
    if action == "resume":
        session_resume(principal_id=principal_id, session_id=session_id)
        return JsonResponse({"paused": False})
    return JsonResponse({"code": "invalid_request", "detail": f"unknown action {action!r}"}, status=400)


@require_POST
def monitor_cleanup(request: HttpRequest) -> JsonResponse:
    """Retention from the monitor: ``dry_run=1`` counts, ``dry_run=0`` deletes."""
    try:
        days = int(request.POST.get("older_than_days", ""))
        report = retention_run(older_than_days=days, dry_run=request.POST.get("dry_run", "1") != "0")
    except ValueError:
        return JsonResponse({"code": "invalid_request", "detail": "older_than_days must be an integer"}, status=400)
    except DomainError as exc:
        return JsonResponse(exc.as_dict(), status=exc.status)
    return JsonResponse(report.as_dict())


urlpatterns = [
    path("", admin.site.admin_view(monitor_page), name="jobs-monitor"),
    path("data", admin.site.admin_view(monitor_data), name="jobs-monitor-data"),
    path("action", admin.site.admin_view(monitor_action), name="jobs-monitor-action"),
    path("cleanup", admin.site.admin_view(monitor_cleanup), name="jobs-monitor-cleanup"),
]
