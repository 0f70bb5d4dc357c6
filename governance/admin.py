from __future__ import annotations

from typing import Any

from django.contrib import admin

from governance.forms import RISKS, PolicyRuleForm
from governance.models import Grant, PolicyRule, WebhookSecret

__all__ = ["RISKS", "GrantAdmin", "PolicyRuleAdmin", "PolicyRuleForm"]


@admin.register(Grant)
class GrantAdmin(admin.ModelAdmin[Grant]):
    list_display = ("permission", "user", "group", "created_at")
    list_filter = ("permission",)
    search_fields = ("permission", "user__username", "group__name")
    raw_id_fields = ("user",)


@admin.register(PolicyRule)
class PolicyRuleAdmin(admin.ModelAdmin[PolicyRule]):
    form = PolicyRuleForm
    list_display = ("order", "name", "enabled", "job_type", "scope", "risk", "decision", "approvers",
                    "checkpoint", "updated_at")
    list_display_links = ("name",)
    list_editable = ("order", "enabled")
    list_filter = ("decision", "enabled", "scope", "risk")
    search_fields = ("name", "job_type", "reason")
    raw_id_fields = ("principal",)


@admin.register(WebhookSecret)
class WebhookSecretAdmin(admin.ModelAdmin[WebhookSecret]):
    """Who has a signing secret and when it was rotated; the secret itself is never shown here
    (its owner reads it at ``GET /api/v1/me``)."""

    list_display = ("principal", "created_at", "rotated_at")
    search_fields = ("principal__username",)
    fields = ("principal", "created_at", "rotated_at")
    readonly_fields = fields

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False
