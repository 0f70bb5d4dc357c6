"""The policy rule form: the one validation of a rule, used by the admin and the what-if."""

from __future__ import annotations

from typing import Any

from django import forms

from governance.models import Decision, PolicyRule
from governance.policy import conditions_errors, redact_fields_errors

RISKS = ("low", "medium", "high", "critical")


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
