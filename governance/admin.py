from __future__ import annotations

from django.contrib import admin

from governance.forms import RISKS, PolicyRuleForm
from governance.models import Grant, PolicyRule

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
