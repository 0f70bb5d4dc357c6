from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from audit.models import AuditStamp


@admin.register(AuditStamp)
class AuditStampAdmin(admin.ModelAdmin[AuditStamp]):
    """Read-only: stamps are append-only; the database refuses edits anyway."""

    list_display = ("job_id", "seq", "created_at", "actor", "event", "from_status", "to_status")
    list_filter = ("event",)
    search_fields = ("job_id", "actor")
    show_full_result_count = False
    readonly_fields = [f.name for f in AuditStamp._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
