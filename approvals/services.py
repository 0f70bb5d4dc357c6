"""Approval writes. Deciding (approve/deny/expire) is built on top of ``approval_open``."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from approvals.models import ApprovalRequest, ApprovalStatus
from audit.services import stamp_append
from jobs.models import Job, JobStatus


def approval_open(*, job: Job, checkpoint: str, approvers: int) -> ApprovalRequest | None:
    """Open the pending request for ``job`` at ``checkpoint`` (idempotent)."""
    if not Job.objects.filter(pk=job.pk, status=JobStatus.PENDING_APPROVAL).exists():
        return None
    try:
        with transaction.atomic():
            request = ApprovalRequest.objects.create(
                job=job,
                checkpoint=checkpoint,
                risk=job.risk,
                required_approvals=max(1, approvers),
                approver_permission=f"approve:{job.scope}",
                expires_at=timezone.now() + timedelta(seconds=settings.APPROVAL_TTL_S),
            )
            stamp_append(
                job_id=job.pk,
                event="approval_requested",
                details={
                    "approval_id": request.pk,
                    "checkpoint": checkpoint,
                    "required_approvals": request.required_approvals,
                    "approver_permission": request.approver_permission,
                },
            )
            return request
    except IntegrityError:
        return ApprovalRequest.objects.filter(
            job=job, checkpoint=checkpoint, status=ApprovalStatus.PENDING
        ).first()
