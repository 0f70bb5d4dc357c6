"""Reads for approvals and the dead-letter queue."""

from __future__ import annotations

import fnmatch
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from approvals.models import ApprovalRequest, ApprovalStatus
from governance.models import Checkpoint
from governance.selectors import principal_grants
from jobs.errors import UnknownJobType
from jobs.registry import registry


def approval_granted(*, job_id: str, checkpoint: str) -> bool:
    """Whether the job's review at ``checkpoint`` is done.

    An approval that changed the inputs at ``before_commit`` does not count: the job drafts
    again from the new inputs and that new proposal is reviewed in a new request.
    """
    return ApprovalRequest.objects.filter(
        job_id=job_id, checkpoint=checkpoint, status=ApprovalStatus.APPROVED, inputs_modified=False
    ).exists()


def approvals_visible_to(
    *, principal: AbstractBaseUser | AnonymousUser, status: str | None = None
) -> QuerySet[ApprovalRequest]:
    """Requests a reviewer may see: those whose approver grant the reviewer holds (globs count)."""
    grants = principal_grants(principal=principal)
    qs = ApprovalRequest.objects.select_related("job", "job__principal")
    if status:
        qs = qs.filter(status=status)
    if not grants:
        return qs.none()
    wanted = set(qs.values_list("approver_permission", flat=True).distinct())
    allowed = [p for p in wanted if any(fnmatch.fnmatchcase(p, g) for g in grants)]
    return qs.filter(approver_permission__in=allowed).order_by("expires_at", "pk")


def approval_pending_count(*, principal: AbstractBaseUser | AnonymousUser) -> int:
    return approvals_visible_to(principal=principal, status=ApprovalStatus.PENDING).count()


def approval_review(*, approval: ApprovalRequest) -> dict[str, Any]:
    """What the reviewer sees: the job type's ``describe`` of the proposal, never prompt history.

    Inputs are the stored public inputs (secret fields are encrypted elsewhere and only their
    names are listed).
    """
    job = approval.job
    try:
        job_type = registry.get(job.job_type)
    except UnknownJobType:
        describe: dict[str, Any] = {"summary": f"unregistered job type {job.job_type}", "evidence": [],
                                    "impact": "", "rollback": "unknown"}
        secret_fields: list[str] = []
        mission = ""
    else:
        describe = job_type.describe(job.proposal if approval.checkpoint == Checkpoint.BEFORE_COMMIT else None)
        secret_fields = list(job_type.secret_fields)
        mission = job_type.mission()
    decisions = list(approval.decisions.select_related("approver").order_by("created_at"))
    return {
        "summary": describe.get("summary", ""),
        "evidence": describe.get("evidence", []),
        "impact": describe.get("impact", ""),
        "rollback": describe.get("rollback", ""),
        "mission": mission,
        "proposal": job.proposal if approval.checkpoint == Checkpoint.BEFORE_COMMIT else None,
        "inputs": job.inputs,
        "secret_fields": secret_fields,
        "policy": job.policy_decision,
        "approvals": sum(1 for d in decisions if d.approve),
        "decisions": decisions,
    }
