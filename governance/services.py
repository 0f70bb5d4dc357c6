"""Governance checks shared by submit (jobs.services) and the worker (jobs.runner)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model

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


def governance_recheck(*, job: Job, scopes: list[str] | None = None) -> Verdict:
    """Re-check, inside the worker and before any handler runs, what submit checked.

    Steps: (1) the scope lock of this worker; (2) the job type still registered and its scope
    unchanged; (3) the principal still active and holding every required grant; (4) the current
    policy does not block the job (a rule changed to ``block`` after submit stops it).
    """
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
    missing = missing_permissions(required=job.permissions, grants=principal_grants(principal=principal))
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
    )
    details = {"policy": decision.as_dict()}
    if decision.action == Decision.BLOCK:
        return Verdict(False, f"policy now blocks: {decision.reason}", "policy_violation", details)
    return Verdict(True, "", "", details)


@dataclass
class PrincipalResult:
    user: Any
    token: str
    grants: set[str]
    created: bool


def principal_ensure(
    *,
    username: str,
    grants: list[str],
    staff: bool = False,
    superuser: bool = False,
    password: str | None = None,
    token_key: str | None = None,
) -> PrincipalResult:
    """Create or update a principal: the user, its grants (added, never removed here) and token."""
    from django.db import transaction
    from rest_framework.authtoken.models import Token

    from governance.models import Grant

    User = get_user_model()
    with transaction.atomic():
        user, created = User.objects.get_or_create(username=username)
        user.is_active = True
        user.is_staff = user.is_staff or staff
        user.is_superuser = user.is_superuser or superuser
        if password:
            user.set_password(password)
        elif created:
            user.set_unusable_password()
        user.save()
        for perm in grants:
            Grant.objects.get_or_create(user=user, permission=perm)
        if token_key:
            Token.objects.filter(user=user).exclude(key=token_key).delete()
            token, _ = Token.objects.get_or_create(user=user, defaults={"key": token_key})
        else:
            token, _ = Token.objects.get_or_create(user=user)
        held = set(Grant.objects.filter(user=user).values_list("permission", flat=True))
    return PrincipalResult(user=user, token=token.key, grants=held, created=created)


def grant_revoke(*, username: str, permissions: list[str]) -> list[str]:
    """Remove the named grants from a user (not from its groups); return those that were held.

    A job already admitted with one of these grants is stopped by the worker's re-check
    (``dead_lettered``, ``policy_violation``) before any handler runs.
    """
    from governance.models import Grant

    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        return []
    held = list(
        Grant.objects.filter(user=user, permission__in=permissions).values_list("permission", flat=True)
    )
    Grant.objects.filter(user=user, permission__in=permissions).delete()
    return sorted(held)
