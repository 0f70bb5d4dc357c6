"""The dead-letter queue console: replay (from the failed stage, fresh attempt budget) or
discard (to ``cancelled`` with a reason), one job or many.

Every action calls the same service as the REST API and ``manage.py replay_jobs``
(:mod:`jobs.services.operations`); access is for operators (staff, or the ``jobs:replay`` grant).
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import DateFieldListFilter
from django.contrib.admin.utils import unquote
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from audit.selectors import stamps_for_job
from common.admin import ReadOnlyAdminMixin
from common.errors import DomainError
from jobs.models import DeadLetteredJob, Job, JobStatus
from jobs.selectors import job_runs
from jobs.services.operations import is_operator, job_discard, job_replay


def stamps_for_display(job_id: str) -> list[Any]:
    """A job's stamps with their details as JSON text, for the stamps table template."""
    stamps = list(stamps_for_job(job_id=job_id))
    for stamp in stamps:
        stamp.details_json = json.dumps(stamp.details, sort_keys=True, default=str)  # type: ignore[attr-defined]
    return stamps


class SessionFilter(admin.SimpleListFilter):
    title = "session"
    parameter_name = "session"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        sessions = (Job.objects.filter(status=JobStatus.DEAD_LETTERED).values_list("session_id", flat=True)
                    .distinct().order_by("session_id")[:50])
        return [(s, s) for s in sessions]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(session_id=self.value()) if self.value() else queryset


@admin.register(DeadLetteredJob)
class DeadLetteredJobAdmin(ReadOnlyAdminMixin, admin.ModelAdmin[DeadLetteredJob]):
    """The dead-letter queue. Replay: from the failed stage with a fresh attempt budget.
    Discard: to ``cancelled`` with reason ``discarded: <why>``."""

    list_display = ("id", "job_type", "stage", "error_class", "session_id", "principal", "finished_at",
                    "short_error")
    list_filter = ("error_class", "job_type", SessionFilter, ("finished_at", DateFieldListFilter))
    list_select_related = ("principal",)
    raw_id_fields = ("principal",)
    search_fields = ("id", "session_id", "trace_id")
    show_full_result_count = False
    date_hierarchy = "finished_at"
    actions = ["replay_selected", "discard_selected"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[DeadLetteredJob]:
        return super().get_queryset(request).filter(status=JobStatus.DEAD_LETTERED)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return is_operator(request.user) and bool(request.user.is_staff)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_operator(request.user) and bool(request.user.is_staff)


    @admin.display(description="error")
    def short_error(self, obj: Job) -> str:
        return (obj.error or "")[:120]

    # --- actions (bulk) -------------------------------------------------------------------
    @admin.action(description="Replay selected jobs from their failed stage")
    def replay_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetteredJob]) -> None:
        done, refused = 0, []
        for job in queryset.order_by("pk"):
            try:
                job_replay(job=job, actor=request.user)  # type: ignore[arg-type]
                done += 1
            except DomainError as exc:
                refused.append(f"{job.pk} ({exc.code})")
        messages.success(request, f"Replayed {done} job(s).")
        if refused:
            messages.warning(request, "Not replayed: " + "; ".join(refused))

    @admin.action(description="Discard selected jobs (cancel, with a reason)…")
    def discard_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetteredJob]) -> HttpResponse | None:
        if request.POST.get("confirmed") != "yes":
            ids = list(queryset.values_list("pk", flat=True))
            context = {
                **self.admin_site.each_context(request),
                "title": "Discard dead-lettered jobs",
                "heading": f"Discard {len(ids)} dead-lettered job(s)?",
                "question": "They move to cancelled with your reason and will not run again.",
                "items": ids,
                "hidden": [("action", "discard_selected"), *[("_selected_action", i) for i in ids]],
                "action_url": request.get_full_path(),
                "cancel_url": request.get_full_path(),
                "ask_reason": True,
                "confirm_label": "Yes, discard",
            }
            return TemplateResponse(request, "admin/confirm.html", context)
        reason = request.POST.get("reason", "")
        done = 0
        for job in queryset.order_by("pk"):
            try:
                job_discard(job=job, actor=request.user, reason=reason)  # type: ignore[arg-type]
                done += 1
            except DomainError as exc:
                messages.warning(request, f"Not discarded: {job.pk} ({exc.code})")
        messages.success(request, f"Discarded {done} job(s).")
        return None

    # --- one job: detail with error and stamps, replay / discard with confirmation ---------
    def get_urls(self) -> list[URLPattern]:
        own = [
            path("<str:job_id>/replay/", self.admin_site.admin_view(self.replay_view),
                 name="jobs_deadletteredjob_replay"),
            path("<str:job_id>/discard/", self.admin_site.admin_view(self.discard_view),
                 name="jobs_deadletteredjob_discard"),
        ]
        return own + super().get_urls()

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if not self.has_view_permission(request):
            return super().change_view(request, object_id, form_url, extra_context)
        # The changelist links to the admin-quoted pk ("_" becomes "_5F").
        job = get_object_or_404(Job.objects.select_related("principal"), pk=unquote(object_id))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Dead-lettered job {job.pk}",
            "opts": self.opts,
            "job": job,
            "runs": list(job_runs(job_id=job.pk)),
            "stamps": stamps_for_display(job.pk),
        }
        return TemplateResponse(request, "admin/jobs/dead_letter.html", context)

    def _one(self, request: HttpRequest, job_id: str, *, verb: str) -> HttpResponse:
        job = get_object_or_404(Job, pk=job_id)
        detail_url = reverse("admin:jobs_deadletteredjob_change", args=[job.pk])
        if request.method != "POST" or not self.has_view_permission(request):
            return HttpResponseRedirect(detail_url)
        if request.POST.get("confirmed") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": f"{verb.capitalize()} {job.pk}",
                "heading": f"{verb.capitalize()} job {job.pk}?",
                "question": (f"It goes back to queued at stage {job.stage} with a fresh attempt budget."
                             if verb == "replay" else "It moves to cancelled and will not run again."),
                "items": [f"{job.job_type} · {job.error_class} · {job.error[:200]}"],
                "hidden": [],
                "action_url": request.path,
                "cancel_url": detail_url,
                "ask_reason": verb == "discard",
                "confirm_label": f"Yes, {verb}",
            }
            return TemplateResponse(request, "admin/confirm.html", context)
        try:
            if verb == "replay":
                job_replay(job=job, actor=request.user)  # type: ignore[arg-type]
            else:
                job_discard(job=job, actor=request.user, reason=request.POST.get("reason", ""))  # type: ignore[arg-type]
        except DomainError as exc:
            messages.error(request, f"Refused ({exc.code}): {exc.detail}")
            return HttpResponseRedirect(detail_url)
        messages.success(request, f"Job {job.pk}: {verb} done.")
        return HttpResponseRedirect(reverse("admin:jobs_deadletteredjob_changelist"))

    def replay_view(self, request: HttpRequest, job_id: str) -> HttpResponse:
        return self._one(request, job_id, verb="replay")

    def discard_view(self, request: HttpRequest, job_id: str) -> HttpResponse:
        return self._one(request, job_id, verb="discard")
