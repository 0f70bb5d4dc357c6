"""Governance reads made for every job, cached per process behind one version token.

Submit and the worker's re-check both need the active policy rules, the principal's grants and
(for group-scoped rules) its groups — three queries per job that almost always return what they
returned for the previous job. Every change to those (a policy rule, a grant, a group
membership saved or deleted) replaces the token in the single ``GovernanceVersion`` row, in the
same transaction as the change (signal receivers, connected in ``GovernanceConfig.ready``). A
reader takes a :class:`GovernanceSnapshot`: one indexed read of the token (or a token read by a
query it makes anyway, see :func:`token_subquery`), then rules, grants and groups come from
this process's cache while the token is unchanged, and from the database otherwise.

Why this is safe: the token is read before the data it labels. A change committed between the
two reads makes the cache hold newer data under the older token, which the next reader, seeing
the new token, throws away. A token is random, never a counter, so a row lost to a restore or
a test database flush cannot bring an old token back; with no row at all nothing is cached.

Writes that bypass model signals (``QuerySet.update()`` on rules or grants, raw SQL) must call
:func:`governance_bump` themselves; the admin, the services and the commands all save models.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import Group
from django.db.models import Q, Subquery
from django.utils import timezone

from audit.services import canonical_json
from governance.models import GovernanceVersion, Grant, PolicyRule

# Principals whose grants and groups one process keeps per token (then the cache starts over).
MAX_PRINCIPALS = 10_000
VERSION_ROW = 1


def governance_bump() -> None:
    """Give governance a new version token (one upsert, in the caller's transaction)."""
    GovernanceVersion.objects.bulk_create(
        [GovernanceVersion(id=VERSION_ROW, token=secrets.token_hex(16), changed_at=timezone.now())],
        update_conflicts=True, unique_fields=["id"], update_fields=["token", "changed_at"],
    )


def current_token() -> str | None:
    return GovernanceVersion.objects.filter(pk=VERSION_ROW).values_list("token", flat=True).first()


def token_subquery() -> Subquery:
    """The current token as a subquery, to annotate onto a read the caller makes anyway."""
    return Subquery(GovernanceVersion.objects.filter(pk=VERSION_ROW).values("token")[:1])


def _rule_fingerprint(rule: PolicyRule) -> dict[str, Any]:
    return {
        "id": rule.pk,
        "order": rule.order,
        "job_type": rule.job_type,
        "scope": rule.scope,
        "principal": rule.principal_id,
        "group": rule.group_id,
        "risk": rule.risk,
        "conditions": rule.conditions,
        "decision": rule.decision,
        "approvers": rule.approvers,
        "checkpoint": rule.checkpoint,
        "redact_fields": rule.redact_fields,
    }


def policy_version(rules: list[PolicyRule]) -> str:
    """A digest of the rules' content: a decision records the version it was made under."""
    digest = hashlib.sha256(canonical_json([_rule_fingerprint(r) for r in rules]).encode()).hexdigest()
    return digest[:16]


@dataclass
class _Entry:
    token: str
    rules: tuple[list[PolicyRule], str] | None = None
    grants: dict[int, frozenset[str]] = field(default_factory=dict)
    groups: dict[int, frozenset[int]] = field(default_factory=dict)


_lock = threading.Lock()
_entry: _Entry | None = None


def _entry_for(token: str) -> _Entry:
    global _entry
    with _lock:
        full = _entry is not None and max(len(_entry.grants), len(_entry.groups)) > MAX_PRINCIPALS
        if _entry is None or _entry.token != token or full:
            _entry = _Entry(token)
        return _entry


def cache_clear() -> None:
    global _entry
    with _lock:
        _entry = None


class GovernanceSnapshot:
    """Rules, grants and groups as of one read of the version token (None: no version row,
    nothing cached)."""

    def __init__(self, token: str | None) -> None:
        self.entry = _entry_for(token) if token is not None else None

    def rules(self) -> tuple[list[PolicyRule], str]:
        """The enabled rules in evaluation order, and their policy version."""
        if self.entry is not None and self.entry.rules is not None:
            return self.entry.rules
        rules = list(PolicyRule.objects.filter(enabled=True).order_by("order", "id"))
        value = (rules, policy_version(rules))
        if self.entry is not None:
            self.entry.rules = value
        return value

    def grants(self, principal_id: int) -> frozenset[str]:
        """The grant strings the principal holds, directly or through its groups."""
        if self.entry is not None and principal_id in self.entry.grants:
            return self.entry.grants[principal_id]
        value = frozenset(
            Grant.objects.filter(Q(user_id=principal_id) | Q(group__user=principal_id))
            .values_list("permission", flat=True).distinct()
        )
        if self.entry is not None:
            self.entry.grants[principal_id] = value
        return value

    def group_ids(self, principal_id: int) -> frozenset[int]:
        if self.entry is not None and principal_id in self.entry.groups:
            return self.entry.groups[principal_id]
        value = frozenset(Group.objects.filter(user=principal_id).values_list("id", flat=True))
        if self.entry is not None:
            self.entry.groups[principal_id] = value
        return value


def governance_snapshot() -> GovernanceSnapshot:
    """A snapshot as of now: one read of the token."""
    return GovernanceSnapshot(current_token())


def governance_snapshot_at(token: str | None) -> GovernanceSnapshot:
    """A snapshot at a token the caller read with a query of its own (:func:`token_subquery`)."""
    return GovernanceSnapshot(token)
