from __future__ import annotations

from typing import Any

from rest_framework import serializers

from approvals.models import ApprovalDecision, ApprovalRequest
from approvals.selectors import approval_review
from jobs.api.validation import StrictSerializer


class ApprovalDecisionSerializer(serializers.ModelSerializer):
    approver = serializers.CharField(source="approver.username")
    decision = serializers.SerializerMethodField()

    class Meta:
        model = ApprovalDecision
        # modified_inputs holds field names only, never values.
        fields = ("approver", "decision", "comment", "modified_inputs", "created_at")

    def get_decision(self, obj: ApprovalDecision) -> str:
        return "approve" if obj.approve else "deny"


class ApprovalListSerializer(serializers.ModelSerializer):
    approval_id = serializers.CharField(source="public_id")
    job_id = serializers.CharField(source="job.pk")
    job_type = serializers.CharField(source="job.job_type")
    job_status = serializers.CharField(source="job.status")
    submitted_by = serializers.CharField(source="job.principal.username")

    class Meta:
        model = ApprovalRequest
        fields = ("approval_id", "job_id", "job_type", "job_status", "submitted_by", "checkpoint", "risk",
                  "status", "required_approvals", "approver_permission", "expires_at", "created_at",
                  "decided_at")


class ApprovalDetailSerializer(ApprovalListSerializer):
    review = serializers.SerializerMethodField()

    class Meta(ApprovalListSerializer.Meta):
        fields: tuple[str, ...] = (*ApprovalListSerializer.Meta.fields, "review")  # type: ignore[assignment]

    def get_review(self, obj: ApprovalRequest) -> dict[str, Any]:
        review = approval_review(approval=obj)
        review["decisions"] = ApprovalDecisionSerializer(review["decisions"], many=True).data
        return review


class ApproveSerializer(StrictSerializer):
    """An approval, with an optional comment and changed input fields."""

    text_fields = frozenset({"comment"})

    comment = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    inputs = serializers.DictField(required=False, allow_null=True, default=None)


class DenySerializer(StrictSerializer):
    """A denial, with an optional comment."""

    text_fields = frozenset({"comment"})

    comment = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
