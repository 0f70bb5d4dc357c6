from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

# Re-registers the policy rule admin with the what-if action (see its docstring).
from jobs import admin_policy  # noqa: F401
from jobs.models import (
    EffectRecord,
    ExternalRecord,
    Job,
    JobRun,
    JobTypeControl,
    PrincipalControl,
    SessionControl,
)


class JobRunInline(admin.TabularInline[JobRun, Job]):
    model = JobRun
    extra = 0
    can_delete = False
    fields = ("run_id", "stage", "attempt", "worker", "started_at", "finished_at", "outcome", "error_class")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin[Job]):
    """Jobs are changed only through services (transitions with stamps), never edited here."""

    list_display = ("id", "job_type", "status", "stage", "session_id", "principal", "priority", "attempts",
                    "error_class", "created_at")
    list_filter = ("status", "stage", "job_type", "error_class")
    search_fields = ("id", "session_id", "trace_id", "correlation_id")
    list_select_related = ("principal",)
    show_full_result_count = False
    date_hierarchy = "created_at"
    exclude = ("secret_inputs",)
    inlines = [JobRunInline]
    actions = ["rollback_selected"]

    @admin.action(description="Roll back selected succeeded jobs (types with a rollback handler)")
    def rollback_selected(self, request: HttpRequest, queryset: Any) -> None:
        # The same service as any other caller; it checks operator rights, status and type.
        from django.contrib import messages

        from jobs.operations import OperationError, job_rollback

        for job in queryset.order_by("pk"):
            try:
                outcome = job_rollback(job=job, actor=request.user)
                messages.success(request, f"Rolled back {job.pk}: {outcome}")
            except OperationError as exc:
                messages.warning(request, f"Not rolled back: {job.pk} ({exc.code}): {exc.detail}")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in Job._meta.fields if f.name != "secret_inputs"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(EffectRecord)
class EffectRecordAdmin(admin.ModelAdmin[EffectRecord]):
    list_display = ("job_type", "effect_key", "job", "created_at")
    raw_id_fields = ("job",)
    show_full_result_count = False


@admin.register(ExternalRecord)
class ExternalRecordAdmin(admin.ModelAdmin[ExternalRecord]):
    list_display = ("id", "key", "written_by_job", "created_at")
    search_fields = ("key", "written_by_job")


# --- control: per-session caps and pauses, per-principal defaults, job-type pause/rate limit ------


@admin.register(SessionControl)
class SessionControlAdmin(admin.ModelAdmin[SessionControl]):
    list_display = ("session_id", "principal", "max_concurrency", "paused", "paused_until", "updated_at")
    list_filter = ("paused",)
    search_fields = ("session_id", "principal__username")
    raw_id_fields = ("principal",)
    list_select_related = ("principal",)


@admin.register(PrincipalControl)
class PrincipalControlAdmin(admin.ModelAdmin[PrincipalControl]):
    list_display = ("principal", "session_max_concurrency", "updated_at")
    raw_id_fields = ("principal",)
    list_select_related = ("principal",)


@admin.register(JobTypeControl)
class JobTypeControlAdmin(admin.ModelAdmin[JobTypeControl]):
    list_display = ("job_type", "paused", "paused_until", "rate_limit", "rate_period_s", "updated_at")
    list_filter = ("paused",)
    search_fields = ("job_type",)
