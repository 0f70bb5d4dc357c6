"""The review console: approval requests with the reviewer's view, and the dead-letter queue.

Every decision here calls the same service as the REST API (approvals.services,
jobs.operations); the admin never writes a status itself. Access follows grants as well as
Django permissions: a staff user holding an ``approve:<scope>`` grant is a reviewer, a staff
user (or a holder of ``jobs:replay``) is an operator.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import DateFieldListFilter
from django.contrib.admin.utils import unquote
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from approvals.admin_stats import approval_stats_page
from approvals.models import ApprovalDecision, ApprovalRequest, ApprovalStatus, DeadLetteredJob
from approvals.selectors import approval_review, job_stamps
from approvals.services import ApprovalError, approval_approve, approval_deny
from config.admin_mixins import ReadOnlyAdminMixin
from governance.selectors import principal_grants
from jobs.models import Job, JobStatus
from jobs.operations import OperationError, is_operator, job_discard, job_replay
from jobs.selectors import job_runs


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str) if value is not None else ""


def _stamps(job_id: str) -> list[Any]:
    stamps = list(job_stamps(job_id=job_id))
    for stamp in stamps:
        stamp.details_json = json.dumps(stamp.details, sort_keys=True, default=str)  # type: ignore[attr-defined]
    return stamps


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
            "stamps": _stamps(approval.job_id),
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
                inputs = json.loads(raw_inputs)
            except ValueError:
                messages.error(request, "Refused (invalid_inputs): modified inputs are not valid JSON")
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
            return TemplateResponse(request, "admin/approvals/confirm.html", context)
        try:
            if action == "approve":
                approval = approval_approve(approval=approval, actor=request.user,  # type: ignore[arg-type]
                                            comment=comment, inputs=inputs)
            else:
                approval = approval_deny(approval=approval, actor=request.user,  # type: ignore[arg-type]
                                         comment=comment)
        except ApprovalError as exc:
            messages.error(request, f"Refused ({exc.code}): {exc.detail}")
            return HttpResponseRedirect(review_url)
        messages.success(request, f"Approval {approval.pk}: {action} recorded; request is {approval.status}.")
        return HttpResponseRedirect(reverse("admin:approvals_approvalrequest_changelist"))


class SessionFilter(admin.SimpleListFilter):
    title = "session"
    parameter_name = "session"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        sessions = (Job.objects.filter(status=JobStatus.DEAD_LETTERED).values_list("session_id", flat=True)
                    .distinct().order_by("session_id")[:50])
        return [(s, s) for s in sessions]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(session_id=self.value()) if self.value() else queryset


@admin.register(DeadLetteredJob)
class DeadLetteredJobAdmin(ReadOnlyAdminMixin, admin.ModelAdmin[DeadLetteredJob]):
    """The dead-letter queue. Replay: from the failed stage with a fresh attempt budget.
    Discard: to ``cancelled`` with reason ``discarded: <why>``."""

    list_display = ("id", "job_type", "stage", "error_class", "session_id", "principal", "finished_at",
                    "short_error")
    list_filter = ("error_class", "job_type", SessionFilter, ("finished_at", DateFieldListFilter))
    list_select_related = ("principal",)
    raw_id_fields = ("principal",)
    search_fields = ("id", "session_id", "trace_id")
    show_full_result_count = False
    date_hierarchy = "finished_at"
    actions = ["replay_selected", "discard_selected"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[DeadLetteredJob]:
        return super().get_queryset(request).filter(status=JobStatus.DEAD_LETTERED)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return is_operator(request.user) and bool(request.user.is_staff)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_operator(request.user) and bool(request.user.is_staff)


    @admin.display(description="error")
    def short_error(self, obj: Job) -> str:
        return (obj.error or "")[:120]

    # --- actions (bulk) -------------------------------------------------------------------
    @admin.action(description="Replay selected jobs from their failed stage")
    def replay_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetteredJob]) -> None:
        done, refused = 0, []
        for job in queryset.order_by("pk"):
            try:
                job_replay(job=job, actor=request.user)  # type: ignore[arg-type]
                done += 1
            except OperationError as exc:
                refused.append(f"{job.pk} ({exc.code})")
        messages.success(request, f"Replayed {done} job(s).")
        if refused:
            messages.warning(request, "Not replayed: " + "; ".join(refused))

    @admin.action(description="Discard selected jobs (cancel, with a reason)…")
    def discard_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetteredJob]) -> HttpResponse | None:
        if request.POST.get("confirmed") != "yes":
            ids = list(queryset.values_list("pk", flat=True))
            context = {
                **self.admin_site.each_context(request),
                "title": "Discard dead-lettered jobs",
                "heading": f"Discard {len(ids)} dead-lettered job(s)?",
                "question": "They move to cancelled with your reason and will not run again.",
                "items": ids,
                "hidden": [("action", "discard_selected"), *[("_selected_action", i) for i in ids]],
                "action_url": request.get_full_path(),
                "cancel_url": request.get_full_path(),
                "ask_reason": True,
                "confirm_label": "Yes, discard",
            }
            return TemplateResponse(request, "admin/approvals/confirm.html", context)
        reason = request.POST.get("reason", "")
        done = 0
        for job in queryset.order_by("pk"):
            try:
                job_discard(job=job, actor=request.user, reason=reason)  # type: ignore[arg-type]
                done += 1
            except OperationError as exc:
                messages.warning(request, f"Not discarded: {job.pk} ({exc.code})")
        messages.success(request, f"Discarded {done} job(s).")
        return None

    # --- one job: detail with error and stamps, replay / discard with confirmation ---------
    def get_urls(self) -> list[URLPattern]:
        own = [
            path("<str:job_id>/replay/", self.admin_site.admin_view(self.replay_view),
                 name="approvals_deadletteredjob_replay"),
            path("<str:job_id>/discard/", self.admin_site.admin_view(self.discard_view),
                 name="approvals_deadletteredjob_discard"),
        ]
        return own + super().get_urls()

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if not self.has_view_permission(request):
            return super().change_view(request, object_id, form_url, extra_context)
        # The changelist links to the admin-quoted pk ("_" becomes "_5F").
        job = get_object_or_404(Job.objects.select_related("principal"), pk=unquote(object_id))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Dead-lettered job {job.pk}",
            "opts": self.opts,
            "job": job,
            "runs": list(job_runs(job_id=job.pk)),
            "stamps": _stamps(job.pk),
        }
        return TemplateResponse(request, "admin/approvals/dead_letter.html", context)

    def _one(self, request: HttpRequest, job_id: str, *, verb: str) -> HttpResponse:
        job = get_object_or_404(Job, pk=job_id)
        detail_url = reverse("admin:approvals_deadletteredjob_change", args=[job.pk])
        if request.method != "POST" or not self.has_view_permission(request):
            return HttpResponseRedirect(detail_url)
        if request.POST.get("confirmed") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": f"{verb.capitalize()} {job.pk}",
                "heading": f"{verb.capitalize()} job {job.pk}?",
                "question": (f"It goes back to queued at stage {job.stage} with a fresh attempt budget."
                             if verb == "replay" else "It moves to cancelled and will not run again."),
                "items": [f"{job.job_type} · {job.error_class} · {job.error[:200]}"],
                "hidden": [],
                "action_url": request.path,
                "cancel_url": detail_url,
                "ask_reason": verb == "discard",
                "confirm_label": f"Yes, {verb}",
            }
            return TemplateResponse(request, "admin/approvals/confirm.html", context)
        try:
            if verb == "replay":
                job_replay(job=job, actor=request.user)  # type: ignore[arg-type]
            else:
                job_discard(job=job, actor=request.user, reason=request.POST.get("reason", ""))  # type: ignore[arg-type]
        except OperationError as exc:
            messages.error(request, f"Refused ({exc.code}): {exc.detail}")
            return HttpResponseRedirect(detail_url)
        messages.success(request, f"Job {job.pk}: {verb} done.")
        return HttpResponseRedirect(reverse("admin:approvals_deadletteredjob_changelist"))

    def replay_view(self, request: HttpRequest, job_id: str) -> HttpResponse:
        return self._one(request, job_id, verb="replay")

    def discard_view(self, request: HttpRequest, job_id: str) -> HttpResponse:
        return self._one(request, job_id, verb="discard")
