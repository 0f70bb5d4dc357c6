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

from audit.models import AuditStamp
from audit.services import SYSTEM_ACTOR, ChainHead
from jobs.chain import job_chain_write, job_first_stamp, job_insert, jobs_insert_bulk, jobs_stamp_bulk
from jobs.completion import status_reached
from jobs.models import TERMINAL_STATUSES, Job, JobStatus
from jobs.observe import bulk_observed, creation_observed, transition_observed
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
    head: ChainHead | None = None,
) -> str | None:
    """Move ``job_id`` to ``to`` if it is in ``allowed_from``; return the prior status or None.

    ``updates`` are other columns written in the same UPDATE; ``expect`` are extra guard
    conditions (e.g. ``{"current_run_id": run_id}`` so a stale worker cannot finish a run it no
    longer owns); ``head`` is the job's chain head if the caller read it with the row (saves a
    read; a stale one costs a retry, never a wrong stamp).
    """
    moved = job_transition_stamped(job_id=job_id, to=to, allowed_from=allowed_from, event=event, actor=actor,
                                   details=details, updates=updates, expect=expect, head=head)
    return moved[0] if moved is not None else None


def job_transition_stamped(
    *,
    job_id: str,
    to: str,
    allowed_from: Iterable[str],
    event: str,
    actor: str = SYSTEM_ACTOR,
    details: dict[str, Any] | None = None,
    updates: dict[str, Any] | None = None,
    expect: dict[str, Any] | None = None,
    head: ChainHead | None = None,
) -> tuple[str, AuditStamp] | None:
    """:func:`job_transition`, returning (prior status, the stamp written) — the stamp is the
    job's new chain head, for a caller that writes to the job again (the worker)."""
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
            found = Job.objects.filter(pk=job_id).values_list("status", "chain_seq", "chain_hash").first()
            if found is None or found[0] not in allowed:
                return None
            current, head = found[0], ChainHead(found[1], found[2])
        fields: dict[str, Any] = {"status": to, "updated_at": now}
        if to in TERMINAL_STATUSES:
            fields["finished_at"] = now
            fields["lease_expires_at"] = None
            fields["dispatched_at"] = None
        fields.update(updates or {})
        stamp = job_chain_write(
            job_id=job_id, event=event, actor=actor, from_status=current, to_status=to, details=details, at=now,
            head=head, guards={"status": current, **(expect or {})}, updates=fields,
        )
        if stamp is not None:
            transition_observed(job_id=job_id, event=event, actor=actor, from_status=current, to_status=to,
                                details=details)
            status_reached(job_ids=[job_id], status=to)
            jobs_changed([job_id])
    return (current, stamp) if stamp is not None else None


def job_create(*, job: Job, event: str, actor: str, details: dict[str, Any] | None = None) -> None:
    """Insert a new job with its creation stamp (the transition from nothing to its first
    status): two INSERTs in the caller's transaction."""
    check_legal("", job.status)
    job_insert(job=job, event=event, actor=actor, details=details)
    creation_observed(job=job, event=event, actor=actor, details=details)
    status_reached(job_ids=[job.id], status=job.status)


def job_created_stamp(
    *, job: Job, event: str, actor: str, details: dict[str, Any] | None = None
) -> None:
    """Stamp the creation of a job that was saved without its first stamp."""
    check_legal("", job.status)
    job_first_stamp(job=job, event=event, actor=actor, details=details)
    creation_observed(job=job, event=event, actor=actor, details=details)
    status_reached(job_ids=[job.id], status=job.status)


def jobs_create_bulk(*, entries: list[tuple[Job, str, str, dict[str, Any]]]) -> None:
    """Insert many new jobs with their creation stamps (``(job, event, actor, details)`` each):
    the bulk twin of :func:`job_create`, for batch submit — one COPY of jobs (their chain heads
    in the rows) and one of stamps, in the caller's transaction."""
    for job, _, _, _ in entries:
        check_legal("", job.status)
    jobs_insert_bulk(entries=entries)
    by_status: dict[str, list[str]] = {}
    for job, event, actor, details in entries:
        creation_observed(job=job, event=event, actor=actor, details=details)
        by_status.setdefault(job.status, []).append(job.id)
    for status, ids in by_status.items():
        status_reached(job_ids=ids, status=status)


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
    per group, so every job gets its own correct stamp, all written with one ``COPY`` and the
    chain heads (read with the lock) moved in bulk (``jobs.chain.jobs_stamp_bulk``) in the same
    transaction. A row another process moved meanwhile is simply not in the group — the same
    "someone else got there first" rule.
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
    heads: dict[str, ChainHead] = {}
    seen: dict[str, tuple[str, str]] = {}  # id -> (job type, trace id), for the log lines
    with transaction.atomic():
        for from_status in allowed:
            # of=self: a selection joined to other tables (e.g. by username) locks only jobs.
            locked = base.filter(status=from_status).order_by("pk").select_for_update(of=("self",))
            rows = list(locked.values_list("pk", "chain_seq", "chain_hash", "job_type", "trace_id"))
            if not rows:
                continue
            ids = [r[0] for r in rows]
            heads.update((r[0], ChainHead(r[1], r[2])) for r in rows)
            seen.update((r[0], (r[3], r[4])) for r in rows)
            for start in range(0, len(ids), BULK_CHUNK):
                Job.objects.filter(pk__in=ids[start:start + BULK_CHUNK], status=from_status).update(**fields)
            moved[from_status] = ids
        jobs_stamp_bulk([
            {"job_id": job_id, "event": event, "actor": actor, "from_status": prior, "to_status": to,
             "details": details, "at": now}
            for prior, ids in moved.items()
            for job_id in ids
        ], heads=heads)
        bulk_observed(moved=moved, jobs=seen, to_status=to, event=event, actor=actor, details=details)
        status_reached(job_ids=[job_id for ids in moved.values() for job_id in ids], status=to)
        jobs_changed(job_id for ids in moved.values() for job_id in ids)
    return moved
