"""The pending-approval and dead-letter badges in the admin's navigation."""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse

from approvals.models import ApprovalStatus
from approvals.selectors import approval_pending_count
from jobs.models import Job, JobStatus

register = template.Library()


@register.inclusion_tag("admin/approvals/nav_badges.html", takes_context=True)
def console_badges(context: dict[str, Any]) -> dict[str, Any]:
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_staff", False):
        return {"show": False}
    return {
        "show": True,
        # Only the requests this reviewer could decide (their approve:<scope> grants).
        "pending": approval_pending_count(principal=user),
        "pending_url": reverse("admin:approvals_approvalrequest_changelist")
        + f"?status__exact={ApprovalStatus.PENDING}",
        "dead": Job.objects.filter(status=JobStatus.DEAD_LETTERED).count(),
        "dead_url": reverse("admin:jobs_deadletteredjob_changelist"),
    }
