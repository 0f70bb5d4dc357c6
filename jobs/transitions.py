"""The one way a job's status changes.

``job_transition`` is a compare-and-set: it reads the current status, refuses if it is not in
``allowed_from``, then runs ``UPDATE … WHERE id=… AND status=<what it read>``. If another
process changed the row in between, the UPDATE matches nothing and the call is a no-op that
returns None — "someone else got there first" — never a double execution. The audit stamp is
written in the same transaction, so the trail can never disagree with the data, and a wake-up
for requests waiting on the job (``jobs.wakeups``) goes out after that transaction commits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from audit.services import SYSTEM_ACTOR, stamp_append, stamps_append_bulk, stamps_append_genesis_bulk
from jobs.models import TERMINAL_STATUSES, Job, JobStatus
from jobs.wakeups import jobs_changed

S = JobStatus

# to-status -> the statuses it may be reached from ("" is creation).
LEGAL: dict[str, frozenset[str]] = {
    S.BLOCKED: frozenset({""}),
    S.PENDING_APPROVAL: frozenset({"", S.RUNNING, S.QUEUED}),
    S.QUEUED: frozenset({"", S.RUNNING, S.RETRY_SCHEDULED, S.PENDING_APPROVAL, S.DEAD_LETTERED}),
    S.RUNNING: frozenset({S.QUEUED}),
    S.RETRY_SCHEDULED: frozenset({S.RUNNING}),
    S.SUCCEEDED: frozenset({S.RUNNING}),
    S.DEAD_LETTERED: frozenset({S.RUNNING, S.QUEUED, S.RETRY_SCHEDULED, S.PENDING_APPROVAL}),
    S.CANCELLED: frozenset(
        {S.QUEUED, S.RUNNING, S.RETRY_SCHEDULED, S.PENDING_APPROVAL, S.DEAD_LETTERED}
    ),
}


class IllegalTransition(ValueError):
    pass


def check_legal(from_status: str, to_status: str) -> None:
    if from_status not in LEGAL.get(to_status, frozenset()):
        raise IllegalTransition(f"{from_status or '(new)'} -> {to_status} is not a legal transition")


def job_transition(
    *,
    job_id: str,
    to: str,
    allowed_from: Iterable[str],
    event: str,
    actor: str = SYSTEM_ACTOR,
    details: dict[str, Any] | None = None,
    updates: dict[str, Any] | None = None,
    expect: dict[str, Any] | None = None,
) -> str | None:
    """Move ``job_id`` to ``to`` if it is in ``allowed_from``; return the prior status or None.

    ``updates`` are other columns written in the same UPDATE; ``expect`` are extra guard
    conditions (e.g. ``{"current_run_id": run_id}`` so a stale worker cannot finish a run it no
    longer owns).
    """
    allowed = set(allowed_from)
    for from_status in allowed:
        check_legal(from_status, to)
    now = timezone.now()
    # No savepoint of its own: anything raised in here propagates and rolls back the caller's
    # transaction with it, so a savepoint would only cost two round trips per transition.
    with transaction.atomic(savepoint=False):
        if len(allowed) == 1:
            # One possible prior status: the guarded UPDATE alone is the compare-and-set.
            current: str = next(iter(allowed))
        else:
            found = Job.objects.filter(pk=job_id).values_list("status", flat=True).first()
            if found is None or found not in allowed:
                return None
            current = found
        fields: dict[str, Any] = {"status": to, "updated_at": now}
        if to in TERMINAL_STATUSES:
            fields["finished_at"] = now
            fields["lease_expires_at"] = None
            fields["dispatched_at"] = None
        fields.update(updates or {})
        matched = Job.objects.filter(pk=job_id, status=current, **(expect or {})).update(**fields)
        if matched == 0:
            return None
        stamp_append(
            job_id=job_id,
            event=event,
            actor=actor,
            from_status=current,
            to_status=to,
            details=details,
            at=now,
        )
        jobs_changed([job_id])
    return current


def job_created_stamp(
    *, job: Job, event: str, actor: str, details: dict[str, Any] | None = None
) -> None:
    """Stamp a job's creation (the transition from nothing to its first status)."""
    check_legal("", job.status)
    stamp_append(
        job_id=job.id,
        event=event,
        actor=actor,
        from_status="",
        to_status=job.status,
        details=details,
        at=job.created_at,
        genesis=True,
    )


def jobs_created_stamps(*, entries: list[tuple[Job, str, str, dict[str, Any]]]) -> None:
    """Stamp the creation of many jobs (``(job, event, actor, details)`` each) in one statement:
    the bulk twin of :func:`job_created_stamp`, for batch submit."""
    for job, _, _, _ in entries:
        check_legal("", job.status)
    stamps_append_genesis_bulk([
        {"job_id": job.id, "event": event, "actor": actor, "from_status": "", "to_status": job.status,
         "details": details, "at": job.created_at}
        for job, event, actor, details in entries
    ])


# Ids per UPDATE: keeps every statement's parameter list well under SQLite's limit.
BULK_CHUNK = 2000


def jobs_transition_bulk(
    *,
    jobs: QuerySet[Job] | Iterable[str],
    to: str,
    allowed_from: Iterable[str],
    event: str,
    actor: str = SYSTEM_ACTOR,
    details: dict[str, Any] | None = None,
    updates: dict[str, Any] | None = None,
) -> dict[str, list[str]]:
    """Move many jobs to ``to`` at once; return the moved ids grouped by their prior status.

    The set-based twin of :func:`job_transition`, for bulk cancel. For each status in
    ``allowed_from``: lock the matching rows (``SELECT … FOR UPDATE`` on PostgreSQL, in
    primary-key order so two bulk calls cannot deadlock; SQLite serialises writers), then one
    guarded ``UPDATE … WHERE id IN (…) AND status=<that status>``. The prior status is known
    per group, so every job gets its own correct stamp, all written with one INSERT
    (``stamps_append_bulk``) in the same transaction. A row another process moved meanwhile is
    simply not in the group — the same "someone else got there first" rule.
    """
    allowed = list(dict.fromkeys(allowed_from))
    for from_status in allowed:
        check_legal(from_status, to)
    base = jobs if isinstance(jobs, QuerySet) else Job.objects.filter(pk__in=list(jobs))
    now = timezone.now()
    fields: dict[str, Any] = {"status": to, "updated_at": now}
    if to in TERMINAL_STATUSES:
        fields.update(finished_at=now, lease_expires_at=None, dispatched_at=None)
    fields.update(updates or {})
    moved: dict[str, list[str]] = {}
    with transaction.atomic():
        for from_status in allowed:
            # of=self: a selection joined to other tables (e.g. by username) locks only jobs.
            locked = base.filter(status=from_status).order_by("pk").select_for_update(of=("self",))
            ids = list(locked.values_list("pk", flat=True))
            if not ids:
                continue
            for start in range(0, len(ids), BULK_CHUNK):
                Job.objects.filter(pk__in=ids[start:start + BULK_CHUNK], status=from_status).update(**fields)
            moved[from_status] = ids
        stamps_append_bulk([
            {"job_id": job_id, "event": event, "actor": actor, "from_status": prior, "to_status": to,
             "details": details}
            for prior, ids in moved.items()
            for job_id in ids
        ])
        jobs_changed(job_id for ids in moved.values() for job_id in ids)
    return moved
