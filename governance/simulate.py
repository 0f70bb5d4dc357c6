"""Policy what-if: what draft rules would have decided for submissions already recorded.

The comparison is pure: it takes the recorded submissions as an iterable of
``SubmissionRecord`` (the jobs app reads them from its rows, ``jobs.services.policy_whatif``), evaluates
each one twice with ``governance.policy.policy_evaluate`` — the function submit and the worker
use — once with the enabled rules and once with the enabled rules plus the drafts, and counts
the differences. Nothing is written.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Field

from common.errors import DomainError
from governance.forms import PolicyRuleForm
from governance.models import PolicyRule
from governance.policy import PolicyDecision, active_rules, policy_evaluate

# Job ids listed per transition (overall) in a report.
EXAMPLES_PER_TRANSITION = 5
# Draft rules accepted in one what-if.
MAX_DRAFT_RULES = 100
ARROW = "→"

# What a draft may set: the fields of the admin's rule form (``enabled`` is ignored: a draft
# is evaluated as if it were enabled).
DRAFT_FIELDS: tuple[str, ...] = tuple(PolicyRuleForm.Meta.fields)
_JSON_LIST_FIELDS = ("conditions", "redact_fields")


@dataclass(frozen=True)
class SubmissionRecord:
    """One recorded submission, with what ``policy_evaluate`` needs at submit.

    ``inputs`` are the inputs as stored (secret fields removed, redacted fields already
    replaced by ``[REDACTED]``); ``ack`` and ``has_commit`` come from the job type as it is
    registered now. ``registered`` is False when the job type no longer exists: such a
    submission cannot be evaluated and is counted as skipped.
    """

    job_id: str
    principal: AbstractBaseUser | AnonymousUser
    principal_label: str
    job_type: str
    scope: str
    risk: str
    ack: str
    has_commit: bool
    inputs: dict[str, Any]
    registered: bool = True


class DraftRulesInvalid(DomainError):
    """Draft rules that the rule form refuses; ``errors`` maps ``rules.<i>.<field>`` to messages."""

    def __init__(self, detail: str, errors: dict[str, list[str]]) -> None:
        super().__init__("invalid_draft_rules", detail, errors=errors)
        self.errors = errors


def _form_data(raw: dict[str, Any], index: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name in DRAFT_FIELDS:
        if name in raw:
            data[name] = raw[name]
            continue
        model_field = PolicyRule._meta.get_field(name)
        has_default = isinstance(model_field, Field) and model_field.has_default()
        data[name] = model_field.get_default() if isinstance(model_field, Field) and has_default else None
    if not data.get("name"):
        data["name"] = f"draft {index + 1}"
    data["enabled"] = True
    return data


def draft_rules_validate(*, rules: Any) -> list[PolicyRule]:
    """Unsaved ``PolicyRule`` objects for draft rule dicts, validated by the admin's rule form.

    Steps: (1) ``rules`` must be a list of at most ``MAX_DRAFT_RULES`` objects; (2) each object
    may hold only the rule form's fields (missing ones take the model's defaults; the JSON
    fields must be lists, not JSON text); (3) each goes through ``PolicyRuleForm`` — the same
    checks as saving a rule in the admin — and becomes an unsaved rule (no id). Raises
    ``DraftRulesInvalid`` with every problem found.
    """
    if not isinstance(rules, list) or not rules:
        raise DraftRulesInvalid("rules must be a non-empty list of rule objects", {"rules": ["not a non-empty list"]})
    if len(rules) > MAX_DRAFT_RULES:
        raise DraftRulesInvalid(f"at most {MAX_DRAFT_RULES} draft rules at once",
                                {"rules": [f"more than {MAX_DRAFT_RULES} rules"]})
    errors: dict[str, list[str]] = {}
    drafts: list[PolicyRule] = []
    for i, raw in enumerate(rules):
        where = f"rules.{i}"
        if not isinstance(raw, dict):
            errors[where] = ["must be an object with PolicyRule fields"]
            continue
        unknown = sorted(set(raw) - set(DRAFT_FIELDS))
        if unknown:
            errors[where] = [f"unknown fields: {', '.join(unknown)} (known: {', '.join(DRAFT_FIELDS)})"]
            continue
        typed = [f for f in _JSON_LIST_FIELDS if raw.get(f) is not None and not isinstance(raw[f], list)]
        if typed:
            for f in typed:
                errors[f"{where}.{f}"] = ["must be a JSON list"]
            continue
        form = PolicyRuleForm(data=_form_data(raw, i))
        if not form.is_valid():
            for name, messages in form.errors.items():
                key = where if name == "__all__" else f"{where}.{name}"
                errors[key] = [str(m) for m in messages]
            continue
        draft = form.save(commit=False)
        draft.enabled = True
        drafts.append(draft)
    if errors:
        raise DraftRulesInvalid("draft rules are invalid", errors)
    return drafts


def rules_with_drafts(current: list[PolicyRule], drafts: list[PolicyRule]) -> list[PolicyRule]:
    """The enabled rules plus the drafts, in evaluation order (``order``, then id).

    A draft that is a saved (disabled) rule takes its place by id, as it would once enabled;
    a new draft has no id yet and sorts after the saved rules of the same order, in the order
    given. A draft already among the enabled rules is not counted twice.
    """
    current_ids = {r.pk for r in current}
    added = [d for d in drafts if d.pk is None or d.pk not in current_ids]
    keyed = [((r.order, r.pk, 0), r) for r in current]
    keyed += [((d.order, d.pk if d.pk is not None else math.inf, i), d) for i, d in enumerate(added)]
    return [r for _, r in sorted(keyed, key=lambda item: item[0])]


def _outcome(decision: PolicyDecision) -> tuple[str, int, str, tuple[str, ...]]:
    return decision.action, decision.approvers, decision.checkpoint, tuple(sorted(decision.redact_fields))


@dataclass
class Bucket:
    evaluated: int = 0
    changed: int = 0
    transitions: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"evaluated": self.evaluated, "changed": self.changed,
                "transitions": dict(sorted(self.transitions.items()))}


@dataclass
class SimulationReport:
    since: datetime | None
    evaluated: int = 0
    changed: int = 0
    skipped: int = 0
    transitions: Counter[str] = field(default_factory=Counter)
    by_job_type: dict[str, Bucket] = field(default_factory=dict)
    by_principal: dict[str, Bucket] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    draft_rules: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat() if self.since else None,
            "evaluated": self.evaluated,
            "changed": self.changed,
            "skipped": self.skipped,
            "transitions": dict(sorted(self.transitions.items())),
            "by_job_type": {k: v.as_dict() for k, v in sorted(self.by_job_type.items())},
            "by_principal": {k: v.as_dict() for k, v in sorted(self.by_principal.items())},
            "examples": dict(sorted(self.examples.items())),
            "draft_rules": self.draft_rules,
        }


def _draft_summary(rule: PolicyRule) -> dict[str, Any]:
    return {"id": rule.pk, "order": rule.order, "name": rule.name, "job_type": rule.job_type,
            "scope": rule.scope, "risk": rule.risk, "decision": rule.decision}


def policy_compare(
    *,
    draft_rules: list[PolicyRule],
    records: Iterable[SubmissionRecord],
    since: datetime | None = None,
    current_rules: list[PolicyRule] | None = None,
) -> SimulationReport:
    """Evaluate each record under the current rules and under current-plus-draft; count changes.

    Steps: (1) read the enabled rules once (or take ``current_rules``) and merge the drafts in
    (``rules_with_drafts``); (2) when any rule is scoped to a group, read each principal's
    groups once; (3) per record, ``policy_evaluate`` with each rule list — the inputs are those
    submit passed (type, scope, risk, acknowledgment point, commit stage, non-secret inputs), but
    as stored; (4) a record changed when the action, the number of approvers, the checkpoint or
    the redacted fields differ; it is counted under ``"<before>→<after>"`` (a key with the same
    action on both sides means only approvers, checkpoint or redaction changed), overall, per
    job type and per principal, with a few job ids per transition as examples.
    """
    current = active_rules() if current_rules is None else current_rules
    proposed = rules_with_drafts(current, draft_rules)
    needs_groups = any(r.group_id is not None for r in proposed)
    groups_of: dict[Any, set[int]] = {}
    report = SimulationReport(since=since, draft_rules=[_draft_summary(d) for d in draft_rules])
    for record in records:
        if not record.registered:
            report.skipped += 1
            continue
        group_ids: set[int] = set()
        pk = record.principal.pk
        if needs_groups and pk is not None:
            if pk not in groups_of:
                groups = getattr(record.principal, "groups", None)
                groups_of[pk] = set(groups.values_list("id", flat=True)) if groups is not None else set()
            group_ids = groups_of[pk]
        args: dict[str, Any] = {
            "principal": record.principal, "job_type": record.job_type, "scope": record.scope,
            "risk": record.risk, "ack": record.ack, "has_commit": record.has_commit, "inputs": record.inputs,
            "group_ids": group_ids,
        }
        before = _outcome(policy_evaluate(**args, rules=current))
        after = _outcome(policy_evaluate(**args, rules=proposed))
        report.evaluated += 1
        by_type = report.by_job_type.setdefault(record.job_type, Bucket())
        by_principal = report.by_principal.setdefault(record.principal_label, Bucket())
        by_type.evaluated += 1
        by_principal.evaluated += 1
        if before == after:
            continue
        key = f"{before[0]}{ARROW}{after[0]}"
        report.changed += 1
        report.transitions[key] += 1
        for bucket in (by_type, by_principal):
            bucket.changed += 1
            bucket.transitions[key] += 1
        examples = report.examples.setdefault(key, [])
        if len(examples) < EXAMPLES_PER_TRANSITION:
            examples.append(record.job_id)
    return report
