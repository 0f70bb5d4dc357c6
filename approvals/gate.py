"""The approvals app's side of :class:`jobs.hooks.ApprovalGate`, registered in ``ApprovalsConfig.ready``."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db.models import Count

from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.selectors import approval_granted
from approvals.services import approval_request_open, approval_requests_open_bulk
from jobs.models import Job


class ApprovalsGate:
    def open(self, *, job: Job, checkpoint: str, approvers: int) -> None:
        approval_request_open(job=job, checkpoint=checkpoint, approvers=approvers)

    def open_many(self, *, items: list[tuple[Job, str, int]]) -> None:
        approval_requests_open_bulk(items=items)

    def granted(self, *, job_id: str, checkpoint: str) -> bool:
        return approval_granted(job_id=job_id, checkpoint=checkpoint)

    def close_for_jobs(self, *, job_ids: Iterable[str], now: datetime) -> None:
        ApprovalRequest.objects.filter(job_id__in=list(job_ids), status=ApprovalStatus.PENDING).update(
            status=ApprovalStatus.CANCELLED, decided_at=now
        )

    def pending_by_session(self, *, principal_ids: list[int], session_ids: list[str]) -> dict[tuple[int, str], int]:
        rows = (
            ApprovalRequest.objects.filter(
                status=ApprovalStatus.PENDING, job__principal_id__in=principal_ids, job__session_id__in=session_ids
            ).values("job__principal_id", "job__session_id").annotate(n=Count("id")).order_by()
        )
        return {(r["job__principal_id"], r["job__session_id"]): r["n"] for r in rows}

    def summary(self, *, job_id: str) -> dict[str, Any] | None:
        request = ApprovalRequest.objects.filter(job_id=job_id).order_by("-created_at").first()
        if request is None:
            return None
        return {
            "approval_id": request.public_id,
            "checkpoint": request.checkpoint,
            "status": request.status,
            "required_approvals": request.required_approvals,
            "expires_at": request.expires_at,
        }
