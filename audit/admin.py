from __future__ import annotations

from django.contrib import admin

from audit.models import AuditStamp
from common.admin import ReadOnlyAdminMixin


@admin.register(AuditStamp)
class AuditStampAdmin(ReadOnlyAdminMixin, admin.ModelAdmin[AuditStamp]):
    """Read-only: stamps are append-only; the database refuses edits anyway."""

    list_display = ("job_id", "seq", "created_at", "actor", "event", "from_status", "to_status")
    list_filter = ("event",)
    search_fields = ("job_id", "actor")
    show_full_result_count = False
    readonly_fields = [f.name for f in AuditStamp._meta.fields]

