from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin

from governance.models import Decision, Grant, PolicyRule, WebhookSecret
from governance.policy import conditions_errors, redact_fields_errors

RISKS = ("low", "medium", "high", "critical")


@admin.register(Grant)
class GrantAdmin(admin.ModelAdmin[Grant]):
    list_display = ("permission", "user", "group", "created_at")
    list_filter = ("permission",)
    search_fields = ("permission", "user__username", "group__name")
    raw_id_fields = ("user",)


class PolicyRuleForm(forms.ModelForm[PolicyRule]):
    """Refuses a rule that could not be evaluated as written.

    A condition with an unknown operator or a non-string path would simply never match, so a
    rule meant to block would silently allow; the form names the problem instead of saving it.
    """

    class Meta:
        model = PolicyRule
        fields = ("order", "name", "enabled", "job_type", "scope", "principal", "group", "risk", "conditions",
                  "decision", "approvers", "checkpoint", "redact_fields", "reason")

    def clean_conditions(self) -> Any:
        value = self.cleaned_data.get("conditions")
        errors = conditions_errors(value)
        if errors:
            raise forms.ValidationError(errors)
        return value or []

    def clean_redact_fields(self) -> Any:
        value = self.cleaned_data.get("redact_fields")
        errors = redact_fields_errors(value)
        if errors:
            raise forms.ValidationError(errors)
        return value or []

    def clean_risk(self) -> str:
        value = str(self.cleaned_data.get("risk") or "").strip()
        if value and value not in RISKS:
            raise forms.ValidationError(f"risk must be blank or one of {', '.join(RISKS)}")
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        decision = data.get("decision")
        if decision == Decision.REDACT and not data.get("redact_fields"):
            self.add_error("redact_fields", "a redact rule needs at least one field to redact")
        if decision != Decision.REQUIRE_APPROVAL and data.get("checkpoint"):
            self.add_error("checkpoint", "a checkpoint applies only to require_approval rules")
        return data


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
