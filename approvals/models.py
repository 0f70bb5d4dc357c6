"""Approval requests at a job's checkpoint, and each approver's decision."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

from jobs.models import Job


class ApprovalStatus(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


def new_approval_id() -> str:
    """The public id of an approval request: unguessable, like a job id (the integer primary
    key stays internal, for joins and the admin)."""
    return "apr_" + secrets.token_urlsafe(18)


class ApprovalRequest(models.Model):
    public_id = models.CharField(max_length=40, unique=True, default=new_approval_id, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="approval_requests")
    checkpoint = models.CharField(max_length=32)
    risk = models.CharField(max_length=16, default="low")
    required_approvals = models.PositiveSmallIntegerField(default=1)
    # The grant an approver must hold, e.g. "approve:crm".
    approver_permission = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)
    # Set when an approver changed the inputs at ``before_commit``: the proposal was drafted
    # from the old inputs, so the job drafts again and the new proposal is reviewed again.
    inputs_modified = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=("job", "checkpoint"),
                condition=models.Q(status="pending"),
                name="approval_one_pending_per_checkpoint",
            )
        ]
        indexes = [models.Index(fields=("status", "expires_at"), name="approval_status_idx")]

    def __str__(self) -> str:
        return f"approval {self.public_id} for {self.job_id} ({self.checkpoint}, {self.status})"


class ApprovalDecision(models.Model):
    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="decisions")
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    approve = models.BooleanField()
    comment = models.TextField(blank=True, default="")
    modified_inputs = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("request", "approver"), name="approval_one_decision_per_approver")
        ]

    def __str__(self) -> str:
        return f"{'approve' if self.approve else 'deny'} by {self.approver_id} on {self.request_id}"
