"""The approval analytics page in the admin: the numbers of ``approvals.analytics`` as SVG charts.

Reached from the approval requests list ("Analytics"); staff reviewers and staff operators.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from approvals.analytics import DEFAULT_WINDOW, approval_stats
from approvals.charts import bar_chart, fmt_count, fmt_duration, fmt_ratio, stacked_bar
from approvals.models import ApprovalRequest
from governance.selectors import principal_grants

WINDOW_CHOICES = (1, 7, 30, 90)


def can_see_stats(user: Any) -> bool:
    """Staff, or anyone holding an approver grant (``approve:<scope>``)."""
    if not (user.is_authenticated and user.is_active):
        return False
    return bool(user.is_staff or any(g.startswith("approve:") for g in principal_grants(principal=user)))


def approval_stats_page(request: HttpRequest) -> HttpResponse:
    """``admin/approvals/approvalrequest/stats/?days=N`` (wrapped in ``admin_view``: staff only)."""
    if not can_see_stats(request.user):
        raise PermissionDenied
    try:
        days = int(request.GET.get("days", DEFAULT_WINDOW.days))
    except ValueError:
        days = DEFAULT_WINDOW.days
    days = min(max(days, 1), 366)
    now = timezone.now()
    stats = approval_stats(since=now - timedelta(days=days), now=now)
    risk_rows = [(risk, [d.p50_s, d.p90_s]) for risk, d in stats.time_to_decision_by_risk.items()]
    scope_rows = [(scope, [d.p50_s, d.p90_s]) for scope, d in stats.time_to_decision_by_scope.items()]
    charts = {
        "by_risk": bar_chart(title="Time to decision by risk", rows=risk_rows, series=["p50", "p90"],
                             fmt=fmt_duration),
        "by_scope": bar_chart(title="Time to decision by scope", rows=scope_rows, series=["p50", "p90"],
                              fmt=fmt_duration),
        "outcomes": stacked_bar(title="Outcomes", parts=[
            ("approved", stats.by_status.get("approved", 0)), ("denied", stats.by_status.get("denied", 0)),
            ("expired", stats.by_status.get("expired", 0))]),
        "reviewers": bar_chart(
            title="Decisions per reviewer", series=["approved", "denied"],
            rows=[(r.reviewer, [float(r.approved), float(r.denied)]) for r in stats.reviewers[:20]]),
    }
    context = {
        **admin.site.each_context(request),
        "title": "Approval analytics",
        "opts": ApprovalRequest._meta,
        "stats": stats,
        "charts": charts,
        "days": days,
        "window_choices": WINDOW_CHOICES,
        "cards": [
            ("requests", fmt_count(stats.requests)),
            ("approve rate", fmt_ratio(stats.rates.get("approve"))),
            ("deny rate", fmt_ratio(stats.rates.get("deny"))),
            ("expire rate", fmt_ratio(stats.rates.get("expire"))),
            ("time to decision p50", fmt_duration(stats.time_to_decision.p50_s)),
            ("time to decision p90", fmt_duration(stats.time_to_decision.p90_s)),
            ("pending now", fmt_count(stats.pending)),
            (f"pending past SLA ({fmt_duration(stats.sla_s)})", fmt_count(stats.pending_past_sla)),
            ("modified-input rate", fmt_ratio(stats.modified_input_rate)),
        ],
        "overdue": [{**o.__dict__, "age": fmt_duration(o.age_s)} for o in stats.overdue],
        "reviewers": [{**r.__dict__, "p50": fmt_duration(r.p50_s)} for r in stats.reviewers],
    }
    return TemplateResponse(request, "admin/approvals/stats.html", context)
