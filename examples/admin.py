from __future__ import annotations

from django.contrib import admin

from examples.models import ExternalRecord


@admin.register(ExternalRecord)
class ExternalRecordAdmin(admin.ModelAdmin[ExternalRecord]):
    list_display = ("id", "key", "written_by_job", "created_at")
    search_fields = ("key", "written_by_job")
