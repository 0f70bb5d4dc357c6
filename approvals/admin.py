"""The review console: approval requests with the reviewer's view.

Every decision here calls the same service as the REST API (approvals.services); the admin
never writes a status itself. Access follows grants as well as Django permissions: a staff user
holding an ``approve:<scope>`` grant is a reviewer. (The dead-letter queue console is in
``jobs.admin.dead_letter``, beside the replay service it calls.)
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from approvals.admin_stats import approval_stats_page
from approvals.models import ApprovalDecision, ApprovalRequest, ApprovalStatus
from approvals.selectors import approval_review
from approvals.services import approval_approve, approval_deny
from common.admin import ReadOnlyAdminMixin
from common.errors import DomainError
from common.validation import json_loads
from governance.selectors import principal_grants
from jobs.admin.dead_letter import stamps_for_display


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str) if value is not None else ""


def is_reviewer(user: Any) -> bool:
    if not (user.is_active and user.is_staff):
        return False
    return bool(user.is_superuser or any(g.startswith("approve:") for g in principal_grants(principal=user)))


class ApprovalDecisionInline(admin.TabularInline[ApprovalDecision, ApprovalRequest]):
    model = ApprovalDecision
    extra = 0
    can_delete = False
    readonly_fields = ("approver", "approve", "comment", "modified_inputs", "created_at")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(ReadOnlyAdminMixin, admin.ModelAdmin[ApprovalRequest]):
    list_display = ("id", "job_link", "job_type", "checkpoint", "risk", "approvals", "status", "expires_at")
    list_filter = ("status", "checkpoint", "risk")
    list_select_related = ("job", "job__principal")
    raw_id_fields = ("job",)
    show_full_result_count = False
    search_fields = ("job__id", "job__session_id")
    inlines = [ApprovalDecisionInline]
    readonly_fields = ("job", "checkpoint", "risk", "required_approvals", "approver_permission", "status",
                       "expires_at", "created_at", "decided_at", "inputs_modified")

    # --- access: reviewers by grant -------------------------------------------------------
    def has_module_permission(self, request: HttpRequest) -> bool:
        return is_reviewer(request.user) or super().has_module_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_reviewer(request.user) or super().has_view_permission(request, obj)


    # --- list -----------------------------------------------------------------------------
    @admin.display(description="job")
    def job_link(self, obj: ApprovalRequest) -> str:
        url = reverse("admin:approvals_approvalrequest_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, obj.job_id)

    @admin.display(description="job type")
    def job_type(self, obj: ApprovalRequest) -> str:
        return obj.job.job_type

    @admin.display(description="approvals")
    def approvals(self, obj: ApprovalRequest) -> str:
        return f"{obj.decisions.filter(approve=True).count()}/{obj.required_approvals}"

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # The console opens on what needs a decision.
        if not request.GET and request.method == "GET":
            return HttpResponseRedirect(f"{request.path}?status__exact={ApprovalStatus.PENDING}")
        return super().changelist_view(request, extra_context)

    # --- the reviewer's view and the decision --------------------------------------------
    def get_urls(self) -> list[URLPattern]:
        own = [path("<int:approval_id>/decide/", self.admin_site.admin_view(self.decide_view),
                    name="approvals_approvalrequest_decide"),
               path("stats/", self.admin_site.admin_view(approval_stats_page),
                    name="approvals_approvalrequest_stats")]
        return own + super().get_urls()

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if not self.has_view_permission(request):
            return super().change_view(request, object_id, form_url, extra_context)
        approval = get_object_or_404(ApprovalRequest.objects.select_related("job", "job__principal"),
                                     pk=object_id)
        review = approval_review(approval=approval)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Review approval {approval.pk}",
            "opts": self.opts,
            "approval": approval,
            "job": approval.job,
            "review": review,
            "proposal_json": _pretty(review["proposal"]),
            "inputs_json": _pretty(review["inputs"]),
            "policy_json": _pretty(review["policy"]),
            "stamps": stamps_for_display(approval.job_id),
        }
        return TemplateResponse(request, "admin/approvals/review.html", context)

    def decide_view(self, request: HttpRequest, approval_id: int) -> HttpResponse:
        """POST from the review page: first a confirmation page, then the service call."""
        approval = get_object_or_404(ApprovalRequest.objects.select_related("job"), pk=approval_id)
        review_url = reverse("admin:approvals_approvalrequest_change", args=[approval.pk])
        if request.method != "POST" or not self.has_view_permission(request):
            return HttpResponseRedirect(review_url)
        action = request.POST.get("action", "")
        comment = request.POST.get("comment", "").strip()
        raw_inputs = request.POST.get("inputs", "").strip()
        if action not in ("approve", "deny"):
            messages.error(request, "Choose approve or deny.")
            return HttpResponseRedirect(review_url)
        inputs: Any = None
        if raw_inputs and action == "approve":
            try:
                inputs = json_loads(raw_inputs)
            except DomainError as exc:
                messages.error(request, f"Refused ({exc.code}): modified inputs: {exc.detail}")
                return HttpResponseRedirect(review_url)
        if request.POST.get("confirmed") != "yes":
            items = [f"job {approval.job_id} ({approval.job.job_type}), checkpoint {approval.checkpoint}",
                     f"comment: {comment or '—'}"]
            if inputs is not None:
                items.append(f"changed fields: {', '.join(sorted(inputs)) if isinstance(inputs, dict) else inputs}")
            context = {
                **self.admin_site.each_context(request),
                "title": f"Confirm {action}",
                "heading": f"Confirm: {action} approval {approval.pk}?",
                "question": ("Approving may release the job to run." if action == "approve"
                             else "Denying cancels the job; it will not run."),
                "items": items,
                "hidden": [("action", action), ("comment", comment), ("inputs", raw_inputs)],
                "action_url": request.path,
                "cancel_url": review_url,
                "confirm_label": f"Yes, {action}",
            }
            return TemplateResponse(request, "admin/confirm.html", context)
        try:
            if action == "approve":
                approval = approval_approve(approval=approval, actor=request.user,  # type: ignore[arg-type]
                                            comment=comment, inputs=inputs)
            else:
                approval = approval_deny(approval=approval, actor=request.user,  # type: ignore[arg-type]
                                         comment=comment)
        except DomainError as exc:
            messages.error(request, f"Refused ({exc.code}): {exc.detail}")
            return HttpResponseRedirect(review_url)
        messages.success(request, f"Approval {approval.pk}: {action} recorded; request is {approval.status}.")
        return HttpResponseRedirect(reverse("admin:approvals_approvalrequest_changelist"))
