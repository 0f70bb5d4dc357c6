"""The governance re-check a worker makes before any handler runs.

Submit checks grants and policy (``jobs.services.submit``); this checks them again inside the
worker, with the same functions (``governance.selectors``, ``governance.policy``), plus what
only a worker can know: its own scope lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from governance.cache import GovernanceSnapshot, governance_snapshot
from governance.models import Decision
from governance.policy import policy_evaluate
from governance.selectors import missing_permissions, principal_grants
from jobs.errors import UnknownJobType
from jobs.models import Job
from jobs.registry import registry


@dataclass
class Verdict:
    ok: bool
    reason: str = ""
    # "policy_violation" or "scope_lock" (the latter refuses the message, not the job).
    kind: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def worker_scopes() -> list[str]:
    return list(settings.JOBS_WORKER_SCOPES)


def scope_allowed(scope: str, scopes: list[str] | None = None) -> bool:
    allowed = worker_scopes() if scopes is None else scopes
    return "*" in allowed or scope in allowed


def governance_recheck(*, job: Job, scopes: list[str] | None = None,
                       snapshot: GovernanceSnapshot | None = None) -> Verdict:
    """Re-check, inside the worker and before any handler runs, what submit checked.

    Steps: (1) the scope lock of this worker; (2) the job type still registered and its scope
    unchanged; (3) the principal still active and holding every required grant; (4) the current
    policy does not block the job (a rule changed to ``block`` after submit stops it).
    Grants and rules come from ``snapshot`` — governance as of the version token the claim read
    with the job (``governance.cache``): no query when nothing changed since the last job.
    """
    snapshot = snapshot or governance_snapshot()
    if not scope_allowed(job.scope, scopes):
        return Verdict(False, f"scope {job.scope!r} not in this worker's scopes", "scope_lock",
                       {"worker_scopes": worker_scopes() if scopes is None else scopes})
    try:
        job_type = registry.get(job.job_type)
    except UnknownJobType:
        return Verdict(False, f"job type {job.job_type!r} is no longer registered", "policy_violation")
    if job_type.scope != job.scope:
        return Verdict(False, "job scope differs from its type's scope", "policy_violation")
    # Read with the job at claim time (select_related), so this is the principal as it is now.
    principal = job.principal
    if principal is None or not principal.is_active:
        return Verdict(False, "principal is inactive or gone", "policy_violation")
    missing = missing_permissions(required=job.permissions,
                                  grants=principal_grants(principal=principal, snapshot=snapshot))
    if missing:
        return Verdict(False, f"grants revoked: {', '.join(missing)}", "policy_violation",
                       {"missing_permissions": missing})
    decision = policy_evaluate(
        principal=principal,
        job_type=job.job_type,
        scope=job.scope,
        risk=job.risk,
        ack=job_type.ack,
        has_commit=job_type.has_commit(),
        inputs=job.inputs,
        snapshot=snapshot,
    )
    details = {"policy": decision.as_dict()}
    if decision.action == Decision.BLOCK:
        return Verdict(False, f"policy now blocks: {decision.reason}", "policy_violation", details)
    return Verdict(True, "", "", details)
