"""Webhook deliveries in the admin: read-only, with "deliver again" for failed or stopped ones
(the same service any other caller uses)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from common.admin import ReadOnlyAdminMixin
from webhooks.models import Delivery
from webhooks.services import deliveries_redeliver


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin[Delivery]):
    list_display = ("event_id", "event_type", "job", "target", "status", "attempts", "last_http_status",
                    "next_attempt_at", "created_at")
    list_filter = ("status", "event_type")
    search_fields = ("event_id", "job__id", "target")
    raw_id_fields = ("job",)
    show_full_result_count = False
    date_hierarchy = "created_at"
    actions = ["deliver_again"]

    @admin.action(description="Deliver again (failed or stopped deliveries)")
    def deliver_again(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        count = deliveries_redeliver(deliveries=queryset, actor=f"operator:{request.user.get_username()}")
        skipped = queryset.count() - count
        messages.success(request, f"{count} delivery(ies) will be sent again.")
        if skipped > 0:
            messages.warning(request, f"{skipped} skipped: only failed or stopped deliveries are sent again.")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in Delivery._meta.fields]
