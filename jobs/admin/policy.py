"""The policy rule admin, with the what-if: "simulate" on draft (disabled) rules.

Governance owns ``PolicyRule`` and its admin, but recorded jobs live here, one layer up; so the
jobs app re-registers the rule admin with one more action, the Django way of extending another
app's admin. The action calls the same service as ``POST /api/v1/policy/simulate``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from governance.admin import PolicyRuleAdmin
from governance.models import PolicyRule
from governance.simulate import ARROW
from jobs.services.policy_whatif import DEFAULT_WINDOW, policy_simulate

MAX_WINDOW_DAYS = 366


def _window_days(request: HttpRequest) -> int:
    try:
        days = int(request.POST.get("since_days", DEFAULT_WINDOW.days))
    except ValueError:
        days = DEFAULT_WINDOW.days
    return min(max(days, 1), MAX_WINDOW_DAYS)


class PolicyRuleWhatIfAdmin(PolicyRuleAdmin):
    actions = ["simulate_selected"]

    @admin.action(description="Simulate selected draft rules over recorded jobs (what-if)")
    def simulate_selected(self, request: HttpRequest, queryset: QuerySet[PolicyRule]) -> HttpResponse | None:
        """Draft = a disabled rule: what it would change if enabled now, before anyone enables it."""
        drafts = list(queryset.filter(enabled=False).order_by("order", "pk"))
        active = list(queryset.filter(enabled=True).values_list("name", flat=True))
        if active:
            messages.warning(request, "Already enabled, so part of the current rules: " + ", ".join(active))
        if not drafts:
            messages.error(request, "Select at least one disabled (draft) rule to simulate.")
            return None
        days = _window_days(request)
        report = policy_simulate(draft_rules=drafts, since=timezone.now() - timedelta(days=days))
        rows = [
            {"transition": key, "before": key.split(ARROW)[0], "after": key.split(ARROW)[1], "count": count,
             "examples": report.examples.get(key, [])}
            for key, count in sorted(report.transitions.items())
        ]
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "title": "Policy what-if",
            "opts": self.opts,
            "drafts": drafts,
            "report": report,
            "rows": rows,
            "by_job_type": [(k, v.as_dict()) for k, v in sorted(report.by_job_type.items())],
            "by_principal": [(k, v.as_dict()) for k, v in sorted(report.by_principal.items())],
            "days": days,
            "selected": [d.pk for d in drafts],
            "action_url": request.get_full_path(),
        }
        return TemplateResponse(request, "admin/governance/policy_simulate.html", context)


admin.site.unregister(PolicyRule)
admin.site.register(PolicyRule, PolicyRuleWhatIfAdmin)
