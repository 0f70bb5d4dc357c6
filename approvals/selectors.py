from __future__ import annotations

from approvals.models import ApprovalRequest, ApprovalStatus


def approval_granted(*, job_id: str, checkpoint: str) -> bool:
    return ApprovalRequest.objects.filter(
        job_id=job_id, checkpoint=checkpoint, status=ApprovalStatus.APPROVED
    ).exists()
