from __future__ import annotations

from django.contrib import admin

from approvals.models import ApprovalDecision, ApprovalRequest


class ApprovalDecisionInline(admin.TabularInline[ApprovalDecision, ApprovalRequest]):
    model = ApprovalDecision
    extra = 0
    can_delete = False
    readonly_fields = ("approver", "approve", "comment", "modified_inputs", "created_at")


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(admin.ModelAdmin[ApprovalRequest]):
    list_display = ("id", "job", "checkpoint", "risk", "required_approvals", "status", "expires_at")
    list_filter = ("status", "checkpoint", "risk")
    raw_id_fields = ("job",)
    inlines = [ApprovalDecisionInline]
    readonly_fields = ("job", "checkpoint", "risk", "required_approvals", "approver_permission", "status",
                       "expires_at", "created_at", "decided_at")
