"""Operator writes on finished jobs: replay from the dead-letter queue, discard, roll back.

The REST API (``POST /api/v1/jobs/{id}/replay``), the admin console (dead-letter queue and
job actions) and ``manage.py replay_jobs`` call these; each is one guarded transition (or, for
rollback, one stamped handler call), never a direct status write.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.utils import timezone

from audit.events import Event
from audit.models import AuditStamp
from common.errors import DomainError
from governance.selectors import missing_permissions, principal_grants
from jobs.admission.dispatcher import dispatch_soon
from jobs.chain import head_of, job_stamp
from jobs.errors import UnknownJobType
from jobs.models import Job, JobStatus
from jobs.registry import JobType, registry
from jobs.transitions import job_transition
from jobs.worker.context import JobContext

REPLAY_GRANT = "jobs:replay"
# A person (checked for the operator grant) or the name of a shell operator (a management
# command: whoever can run it already operates the platform).
Actor = AbstractBaseUser | AnonymousUser | str


def is_operator(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Operators replay, discard and roll back: staff, or holders of the ``jobs:replay`` grant."""
    if not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", False):
        return False
    if getattr(user, "is_staff", False):
        return True
    return not missing_permissions(required=[REPLAY_GRANT], grants=principal_grants(principal=user))


def _actor_label(actor: Actor) -> str:
    if isinstance(actor, str):
        return f"cli:{actor}"
    if not is_operator(actor):
        raise DomainError("permission_denied", "only operators (staff or jobs:replay) may do this")
    return f"principal:{actor.get_username()}"


def job_replay(*, job: Job, actor: Actor) -> Job:
    """dead_lettered → queued at the stage that failed, with a fresh attempt budget.

    The stage outputs already persisted (normalized inputs, proposal) are kept, so a job that
    failed in ``finalize`` commits again without redoing the agent work; the idempotency key and
    the effect ledger are unchanged, so a commit whose effect was recorded is not written twice.
    """
    label = _actor_label(actor)
    prior = job_transition(
        job_id=job.pk, to=JobStatus.QUEUED, allowed_from=[JobStatus.DEAD_LETTERED], event=Event.REPLAYED,
        actor=label,
        details={"replayed_by": label, "stage": job.stage, "previous_error_class": job.error_class,
                 "previous_reason": job.reason, "previous_attempts": job.attempts},
        updates={"attempts": 0, "claims": 0, "error": "", "error_class": "", "reason": "",
                 "run_after": timezone.now(), "finished_at": None, "dispatched_at": None,
                 "dispatch_token": "", "lease_owner": "", "lease_expires_at": None},
    )
    if prior is None:
        raise DomainError("not_dead_lettered", f"job {job.pk} is not dead-lettered")
    dispatch_soon()
    job.refresh_from_db()
    return job


def job_discard(*, job: Job, actor: Actor, reason: str) -> Job:
    """dead_lettered → cancelled: an operator decided the job will not run again.

    ``cancelled`` (not a new status) keeps one vocabulary; the reason starts with ``discarded:``
    so discarded jobs stay distinguishable from denials, expiries and client cancels.
    """
    label = _actor_label(actor)
    reason = (reason or "").strip() or "no reason given"
    prior = job_transition(
        job_id=job.pk, to=JobStatus.CANCELLED, allowed_from=[JobStatus.DEAD_LETTERED], event=Event.DISCARDED,
        actor=label,
        details={"discarded_by": label, "reason": reason, "previous_error_class": job.error_class},
        updates={"reason": f"discarded: {reason}"[:200]},
    )
    if prior is None:
        raise DomainError("not_dead_lettered", f"job {job.pk} is not dead-lettered")
    dispatch_soon()
    job.refresh_from_db()
    return job


def has_rollback(job_type: JobType) -> bool:
    return type(job_type).rollback is not JobType.rollback


def job_rollback(*, job: Job, actor: Actor) -> dict[str, Any]:
    """Run a succeeded job's rollback handler once, with the committed result, and stamp it.

    The job keeps status ``succeeded`` (its commit did happen); the ``rolled_back`` stamp and
    its details are the record. The handler runs in this process inside one transaction with
    its stamp, which suits effects in this database (the demo store); a job type whose rollback
    calls a slow external system should submit a compensating job instead.
    """
    label = _actor_label(actor)
    try:
        job_type = registry.get(job.job_type)
    except UnknownJobType:
        raise DomainError("not_rollbackable", f"job type {job.job_type!r} is not registered") from None
    if job.status != JobStatus.SUCCEEDED or not has_rollback(job_type) or not job.result:
        raise DomainError("not_rollbackable", "only succeeded jobs of a type with a rollback handler")
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if AuditStamp.objects.filter(job_id=job.pk, event=Event.ROLLED_BACK).exists():
            raise DomainError("already_rolled_back", f"job {job.pk} was already rolled back")
        ctx = JobContext(
            job_id=locked.pk, run_id=locked.current_run_id, stage="rollback", attempt=1,
            session_id=locked.session_id, trace_id=locked.trace_id, correlation_id=locked.correlation_id,
            conversation_id=locked.conversation_id, principal=str(locked.principal_id), worker=label,
        )
        outcome = job_type.rollback(ctx, dict(locked.result or {})) or {}
        job_stamp(job_id=job.pk, event=Event.ROLLED_BACK, actor=label, head=head_of(locked),
                  from_status=locked.status, to_status=locked.status,
                  details={"rolled_back_by": label, "outcome": outcome,
                           "tools_used": [c["name"] for c in ctx.tool_calls]})
    return dict(outcome)
