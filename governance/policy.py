"""Policy evaluation: the same function at submit and again inside the worker."""

from __future__ import annotations

import copy
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from governance.cache import GovernanceSnapshot, governance_snapshot, policy_version
from governance.models import Checkpoint, Decision, PolicyRule

REDACTED = "[REDACTED]"
_MISSING = object()

# With no matching rule, the job type's risk decides (docs/governance.md).
RISK_DEFAULTS: dict[str, tuple[str, int]] = {
    "low": (Decision.ALLOW, 0),
    "medium": (Decision.ALLOW, 0),
    "high": (Decision.REQUIRE_APPROVAL, 1),
    "critical": (Decision.REQUIRE_APPROVAL, 2),
}


@dataclass
class PolicyDecision:
    action: str
    reason: str
    policy_version: str
    rule_id: int | None = None
    rule_name: str = ""
    approvers: int = 0
    checkpoint: str = ""
    redact_fields: list[str] = field(default_factory=list)
    path: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        # What dataclasses.asdict gives, built by hand: a batch submit calls this a thousand times.
        return {
            "action": self.action, "reason": self.reason, "policy_version": self.policy_version,
            "rule_id": self.rule_id, "rule_name": self.rule_name, "approvers": self.approvers,
            "checkpoint": self.checkpoint, "redact_fields": list(self.redact_fields), "path": list(self.path),
        }


def _lookup(data: Any, path: str) -> Any:
    current = data
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
    return current


def condition_holds(condition: dict[str, Any], inputs: dict[str, Any]) -> bool:
    op = condition.get("op", "eq")
    expected = condition.get("value")
    actual = _lookup(inputs, str(condition.get("path", "")))
    if op == "exists":
        return (actual is not _MISSING) == bool(expected if expected is not None else True)
    if actual is _MISSING:
        return False
    try:
        match op:
            case "eq":
                return bool(actual == expected)
            case "ne":
                return bool(actual != expected)
            case "in":
                return actual in (expected or [])
            case "not_in":
                return actual not in (expected or [])
            case "gt":
                return bool(actual > expected)
            case "gte":
                return bool(actual >= expected)
            case "lt":
                return bool(actual < expected)
            case "lte":
                return bool(actual <= expected)
            case "contains":
                return expected in actual
            case "regex":
                return re.search(str(expected), str(actual)) is not None
            case "glob":
                return fnmatch.fnmatchcase(str(actual), str(expected))
    except TypeError:
        return False
    return False


VALID_OPS = {"eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "contains", "regex", "glob", "exists"}
# Operators whose value must be a list (membership tests).
_LIST_OPS = {"in", "not_in"}
_PATH_RE = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")


def conditions_errors(conditions: Any) -> list[str]:
    """Why ``conditions`` is not a valid rule condition list (empty when it is).

    A malformed condition would otherwise never match (``condition_holds`` answers False on a
    type error), silently disabling a block rule; the admin form refuses to save it instead.
    """
    if conditions in (None, ""):
        return []
    if not isinstance(conditions, list):
        return ["conditions must be a JSON list of objects"]
    errors: list[str] = []
    for i, cond in enumerate(conditions):
        where = f"condition {i + 1}"
        if not isinstance(cond, dict):
            errors.append(f"{where}: must be an object with path, op and value")
            continue
        unknown = sorted(set(cond) - {"path", "op", "value"})
        if unknown:
            errors.append(f"{where}: unknown keys {', '.join(unknown)}")
        path = cond.get("path")
        if not isinstance(path, str) or not _PATH_RE.match(path):
            errors.append(f"{where}: path must be a dotted field name such as 'amount' or 'contact.email'")
        op = cond.get("op", "eq")
        if op not in VALID_OPS:
            errors.append(f"{where}: unknown op {op!r} (known: {', '.join(sorted(VALID_OPS))})")
            continue
        if op != "exists" and "value" not in cond:
            errors.append(f"{where}: op {op!r} needs a value")
        value = cond.get("value")
        if op in _LIST_OPS and not isinstance(value, list):
            errors.append(f"{where}: op {op!r} needs a list value")
        if op == "exists" and value is not None and not isinstance(value, bool):
            errors.append(f"{where}: op 'exists' takes true, false or no value")
        if op in {"gt", "gte", "lt", "lte"} and (isinstance(value, bool) or not isinstance(value, (int, float, str))):
            errors.append(f"{where}: op {op!r} needs a number or string value")
        if op == "regex":
            try:
                re.compile(str(value))
            except re.error as exc:
                errors.append(f"{where}: invalid regex: {exc}")
    return errors


def redact_fields_errors(fields: Any) -> list[str]:
    """Why ``fields`` is not a valid list of (dotted) input field names to redact."""
    if fields in (None, ""):
        return []
    if not isinstance(fields, list):
        return ["redact fields must be a JSON list of field names"]
    return [
        f"redact field {f!r} must be a dotted field name" for f in fields
        if not isinstance(f, str) or not _PATH_RE.match(f)
    ]


def active_rules() -> list[PolicyRule]:
    return governance_snapshot().rules()[0]


def _rule_matches(
    rule: PolicyRule,
    *,
    principal: AbstractBaseUser | AnonymousUser,
    group_ids: frozenset[int] | set[int],
    job_type: str,
    scope: str,
    risk: str,
    inputs: dict[str, Any],
) -> bool:
    if not fnmatch.fnmatchcase(job_type, rule.job_type or "*"):
        return False
    if rule.scope and rule.scope != scope:
        return False
    if rule.principal_id is not None and rule.principal_id != principal.pk:
        return False
    if rule.group_id is not None and rule.group_id not in group_ids:
        return False
    if rule.risk and rule.risk != risk:
        return False
    return all(condition_holds(c, inputs) for c in rule.conditions or [])


def policy_evaluate(
    *,
    principal: AbstractBaseUser | AnonymousUser,
    job_type: str,
    scope: str,
    risk: str,
    ack: str,
    has_commit: bool,
    inputs: dict[str, Any],
    rules: list[PolicyRule] | None = None,
    group_ids: set[int] | None = None,
    snapshot: GovernanceSnapshot | None = None,
) -> PolicyDecision:
    """Return the decision for one job: first enabled matching rule by order, else risk default.

    A ``redact`` rule is not final: it records its fields and evaluation goes on, so a later
    rule can still block or require approval (the path lists every rule that matched).
    A job type's own acknowledgment point always requires at least one approval there.

    ``rules`` (ordered) replaces the enabled rules and ``group_ids`` the principal's groups; the
    policy what-if (``governance.simulate``) passes both so that thousands of evaluations cost no
    query. Otherwise both come from ``snapshot``, the governance snapshot the caller already took
    (cached behind the governance version; see ``governance.cache``), or a fresh one.
    """
    if rules is None or group_ids is None:
        snapshot = snapshot or governance_snapshot()
    if rules is None:
        assert snapshot is not None
        rules, version = snapshot.rules()
    else:
        version = policy_version(rules)
    if group_ids is None:
        assert snapshot is not None
        # Only read the principal's groups when a rule is scoped to a group.
        pk = principal.pk
        needs_groups = pk is not None and any(r.group_id is not None for r in rules)
        group_ids = set(snapshot.group_ids(pk)) if pk is not None and needs_groups else set()
    path: list[str] = []
    redact: list[str] = []
    decision: PolicyDecision | None = None
    for rule in rules:
        if not _rule_matches(
            rule, principal=principal, group_ids=group_ids, job_type=job_type, scope=scope, risk=risk,
            inputs=inputs,
        ):
            continue
        path.append(f"rule:{rule.pk}:{rule.name}:{rule.decision}")
        if rule.decision == Decision.REDACT:
            redact.extend(f for f in rule.redact_fields if f not in redact)
            continue
        decision = PolicyDecision(
            action=rule.decision,
            reason=rule.reason or f"rule {rule.name}",
            policy_version=version,
            rule_id=rule.pk,
            rule_name=rule.name,
            approvers=rule.approvers if rule.decision == Decision.REQUIRE_APPROVAL else 0,
            checkpoint=rule.checkpoint if rule.decision == Decision.REQUIRE_APPROVAL else "",
        )
        break
    if decision is None:
        action, approvers = RISK_DEFAULTS.get(risk, (Decision.REQUIRE_APPROVAL, 1))
        path.append(f"default:risk={risk}:{action}")
        decision = PolicyDecision(
            action=action,
            reason=f"no rule matched; default for risk {risk}",
            policy_version=version,
            approvers=approvers,
        )
    if ack and ack != "none" and decision.action != Decision.BLOCK:
        path.append(f"job_type_ack:{ack}")
        if decision.action != Decision.REQUIRE_APPROVAL:
            decision.action = Decision.REQUIRE_APPROVAL
            decision.approvers = 1
            decision.reason = f"job type requires acknowledgment {ack}"
        decision.checkpoint = _merge_checkpoints(decision.checkpoint, ack)
    if decision.action == Decision.REQUIRE_APPROVAL:
        decision.approvers = max(1, decision.approvers)
        if not decision.checkpoint:
            decision.checkpoint = Checkpoint.BEFORE_COMMIT if has_commit else Checkpoint.BEFORE_EXECUTE
        if decision.checkpoint in (Checkpoint.BEFORE_COMMIT, Checkpoint.BOTH) and not has_commit:
            decision.checkpoint = Checkpoint.BEFORE_EXECUTE
    decision.redact_fields = redact
    decision.path = path
    if redact and decision.action == Decision.ALLOW:
        decision.action = Decision.REDACT
    return decision


def _merge_checkpoints(a: str, b: str) -> str:
    points = {p for p in (a, b) if p}
    if Checkpoint.BOTH in points or points == {Checkpoint.BEFORE_EXECUTE, Checkpoint.BEFORE_COMMIT}:
        return Checkpoint.BOTH
    return points.pop() if points else ""


def redact_inputs(inputs: dict[str, Any], fields: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Return a copy of ``inputs`` with the named (dotted) fields replaced, and which were present."""
    result = copy.deepcopy(inputs)
    hit: list[str] = []
    for path in fields:
        parts = path.split(".")
        node: Any = result
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict) and parts[-1] in node:
            node[parts[-1]] = REDACTED
            hit.append(path)
    return result, hit
