"""Project-level pages: the start page (``/``), the health probes and ``/metrics``.

Thin: what they show comes from ``config.overview`` (probes), ``jobs.selectors`` (counts) and
``jobs.metrics`` (the Prometheus exposition).
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed

from config import overview
from jobs.metrics import CONTENT_TYPE, metrics_render
from jobs.models import JobStatus
from jobs.selectors import jobs_count_by_status


@require_GET
@never_cache
def home(request: HttpRequest) -> HttpResponse:
    """What runs, links to every console, and (staff only) job counts by status.

    Anyone may see the links and which kinds of process run; worker names, counts by status
    and the pending-approval figure need a staff login.
    """
    is_staff = bool(request.user.is_authenticated and request.user.is_staff)
    workers = overview.workers_snapshot()
    beat_age = overview.seconds_since(overview.beat_last_tick())
    links = [
        ("API reference", reverse("api-docs"), "Swagger UI for the REST API (OpenAPI schema at /api/schema/)"),
        ("Admin", reverse("admin:index"), "jobs, approvals, dead-letter queue, policy rules, principals"),
        ("Task monitor", reverse("jobs-monitor"), "counts by status per session, cancel all, pause (staff)"),
        ("Approvals", reverse("admin:approvals_approvalrequest_changelist"), "pending reviews (reviewers)"),
    ]
    if settings.PLATFORM_FLOWER_URL:
        links.append(("Flower", settings.PLATFORM_FLOWER_URL, "Celery workers, tasks and queues (own login)"))
    links.append(("Metrics", reverse("metrics"), "Prometheus text format (staff, or the scrape token)"))
    counts = jobs_count_by_status() if is_staff else None
    context = {
        "is_staff": is_staff,
        "web": overview.web_server(request),
        "workers": workers,
        "beat_age": beat_age,
        "beat_stale": beat_age is None or beat_age > max(30.0, 5 * settings.JOBS_DISPATCH_TICK_S),
        "broker_kind": overview.broker_kind(),
        "database_kind": overview.database_kind(),
        "links": links,
        "counts": [(status, counts[status]) for status in JobStatus.values] if counts is not None else None,
        "total": sum(counts.values()) if counts is not None else None,
    }
    return TemplateResponse(request, "home.html", context)


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: this process answers. Touches neither the database nor the broker."""
    return JsonResponse({"status": "ok"})


@require_GET
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: the database and the broker answer (503 otherwise), within about a second."""
    checks = {"database": overview.database_answers(), "broker": overview.broker_reachable(timeout=1.0)}
    ok = all(checks.values())
    return JsonResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503)


def _metrics_caller(request: HttpRequest) -> tuple[bool, AbstractBaseUser | AnonymousUser | None]:
    """(scrape token presented and right, the authenticated user if any)."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() == "bearer":
        token = settings.METRICS_TOKEN
        return bool(token) and hmac.compare_digest(credential.strip().encode(), token.encode()), None
    if scheme.lower() == "token":
        try:
            found = TokenAuthentication().authenticate(request)  # type: ignore[arg-type]
        except AuthenticationFailed:
            return False, None
        return False, found[0] if found else None
    return False, request.user if request.user.is_authenticated else None


@require_GET
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format, for staff (session or ``Authorization: Token``) or a scraper
    holding ``METRICS_TOKEN`` (``Authorization: Bearer``); 401 without valid credentials, 403 for
    a user who is not staff."""
    scraper, user = _metrics_caller(request)
    if not scraper:
        if user is None:
            return JsonResponse({"code": "not_authenticated", "detail": "Staff login, an API token of a staff "
                                 "user or the metrics scrape token is required."}, status=401,
                                headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        if not (user.is_active and getattr(user, "is_staff", False)):
            return JsonResponse({"code": "permission_denied", "detail": "Metrics are for staff."}, status=403)
    return HttpResponse(metrics_render(), content_type=CONTENT_TYPE)
