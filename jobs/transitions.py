"""The one way a job's status changes.

``job_transition`` is a compare-and-set: it reads the current status, refuses if it is not in
``allowed_from``, then runs ``UPDATE … WHERE id=… AND status=<what it read>``. If another
process changed the row in between, the UPDATE matches nothing and the call is a no-op that
returns None — "someone else got there first" — never a double execution. The audit stamp is
written in the same transaction, so the trail can never disagree with the data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.services import SYSTEM_ACTOR, stamp_append
from jobs.models import TERMINAL_STATUSES, Job, JobStatus

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
    with transaction.atomic():
        current = Job.objects.filter(pk=job_id).values_list("status", flat=True).first()
        if current is None or current not in allowed:
            return None
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
    )
