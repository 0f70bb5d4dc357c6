"""A job's audit chain: every stamp of a job is written here, and moves the head on the job row.

Each job row carries the head of its chain (``chain_seq``, ``chain_hash``: the last stamp's seq
and hash). A writer that knows the head — the worker holds the job it just claimed, the
dispatcher and the reaper read it with the row — builds the next stamp (``audit.services``
hashes it), then runs one compare-and-set ``UPDATE job SET …, chain_seq = seq + 1, chain_hash
= <new> WHERE id = … AND chain_seq = <head seq> AND <guards>`` and one INSERT of the stamp, in
one transaction. No lookup of the chain's last stamp, no savepoint.

If the UPDATE matches nothing, either a guard failed (the job changed status: "someone else got
there first", the call is a no-op) or only the head moved (another stamp was written since the
head was read, e.g. a cancel request on a running job): the row is read again and, when its
status still passes, the write is retried on the new head. Two writers can never insert the
same seq: the UPDATE serialises them on the row lock, and ``(job_id, seq)`` is unique besides.

Chains with no job row (refusals of forged messages for unknown ids) are written by
``audit.services.stamp_append``, which reads the head from the stamps and retries in a
savepoint. Anything else that writes a job's chain must come through this module, or the head
on the row falls behind and the next stamp fails the unique constraint — loudly.
"""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from audit.models import AuditStamp
from audit.services import (
    SYSTEM_ACTOR,
    ChainHead,
    stamp_append,
    stamp_build,
    stamp_insert,
    stamps_build_bulk,
    stamps_insert_bulk,
)
from common.bulk import rows_insert
from jobs.models import Job

# Retries when only the head moved; each one means another stamp landed in between.
_MAX_HEAD_RETRIES = 20


def head_of(job: Job) -> ChainHead:
    return ChainHead(job.chain_seq, job.chain_hash)


def _read_head(job_id: str) -> tuple[str, ChainHead] | None:
    row = Job.objects.filter(pk=job_id).values_list("status", "chain_seq", "chain_hash").first()
    return (row[0], ChainHead(row[1], row[2])) if row is not None else None


def job_chain_write(
    *,
    job_id: str,
    event: str,
    actor: str = SYSTEM_ACTOR,
    from_status: str = "",
    to_status: str = "",
    details: dict[str, Any] | None = None,
    at: Any = None,
    head: ChainHead | None = None,
    guards: dict[str, Any] | None = None,
    updates: dict[str, Any] | None = None,
) -> AuditStamp | None:
    """Write ``updates`` on the job row if ``guards`` hold, and its stamp; return the stamp.

    Returns None when the row does not exist or a guard failed (nothing written). ``head`` is
    the chain head the caller read with the row; without it the head is read first (one
    SELECT). Runs in the caller's transaction, or in one of its own.

    Steps: (1) build the stamp after ``head``; (2) guarded UPDATE of ``updates`` plus the new
    head, compare-and-set on the old head; (3) one row matched: insert the stamp, done;
    (4) none matched: read status and head again — job gone, a ``status`` guard no longer
    true, or the head unchanged (so another guard failed): None; else back to (1) on the new
    head.
    """
    guards = dict(guards or {})
    fields = dict(updates or {})
    stamp_args: dict[str, Any] = {"job_id": job_id, "event": event, "actor": actor, "from_status": from_status,
                                  "to_status": to_status, "details": details}
    with transaction.atomic(savepoint=False):
        if head is None:
            found = _read_head(job_id)
            if found is None or ("status" in guards and found[0] != guards["status"]):
                return None
            head = found[1]
        for _ in range(_MAX_HEAD_RETRIES):
            stamp = stamp_build(head=head, at=at or timezone.now(), **stamp_args)
            matched = Job.objects.filter(pk=job_id, chain_seq=head.seq, **guards).update(
                **fields, chain_seq=stamp.seq, chain_hash=stamp.hash
            )
            if matched:
                return stamp_insert(stamp)
            found = _read_head(job_id)
            if found is None or ("status" in guards and found[0] != guards["status"]) or found[1] == head:
                return None
            head = found[1]
    raise RuntimeError(f"could not stamp {job_id}: its chain head kept moving")


def job_stamp(
    *,
    job_id: str,
    event: str,
    actor: str = SYSTEM_ACTOR,
    from_status: str = "",
    to_status: str = "",
    details: dict[str, Any] | None = None,
    at: Any = None,
    head: ChainHead | None = None,
) -> AuditStamp:
    """A stamp that changes no status (a refusal, an approval vote, a replayed effect, a rollback).

    On a job: the head moves with it (:func:`job_chain_write`). On an id that is no job (a
    forged or stale message): the stamp starts or extends an orphan chain.
    """
    stamp = job_chain_write(job_id=job_id, event=event, actor=actor, from_status=from_status,
                            to_status=to_status, details=details, at=at, head=head)
    if stamp is not None:
        return stamp
    return stamp_orphan(job_id=job_id, event=event, actor=actor, from_status=from_status,
                        to_status=to_status, details=details, at=at)


def stamp_orphan(
    *,
    job_id: str,
    event: str,
    actor: str = SYSTEM_ACTOR,
    from_status: str = "",
    to_status: str = "",
    details: dict[str, Any] | None = None,
    at: Any = None,
) -> AuditStamp:
    """A stamp for an id with no job row (a refused message naming an unknown job)."""
    return stamp_append(job_id=job_id, event=event, actor=actor, from_status=from_status, to_status=to_status,
                        details=details, at=at)


def job_insert(*, job: Job, event: str, actor: str, details: dict[str, Any] | None = None) -> AuditStamp:
    """Insert a new job with the first stamp of its chain: one INSERT each, in the caller's
    transaction. The head goes into the job's own INSERT."""
    stamp = stamp_build(job_id=job.id, head=ChainHead(), event=event, actor=actor, from_status="",
                        to_status=job.status, details=details, at=job.created_at)
    job.chain_seq, job.chain_hash = stamp.seq, stamp.hash
    job.save(force_insert=True)
    return stamp_insert(stamp)


def jobs_insert_bulk(*, entries: list[tuple[Job, str, str, dict[str, Any]]]) -> int:
    """:func:`job_insert` for many new jobs (``(job, event, actor, details)`` each): heads into
    the rows, then one bulk insert of the jobs (COPY on PostgreSQL) and one of the stamps."""
    stamps = [
        stamp_build(job_id=job.id, head=ChainHead(), event=event, actor=actor, from_status="",
                    to_status=job.status, details=details, at=job.created_at)
        for job, event, actor, details in entries
    ]
    for (job, _, _, _), stamp in zip(entries, stamps, strict=True):
        job.chain_seq, job.chain_hash = stamp.seq, stamp.hash
    rows_insert(Job, [job for job, _, _, _ in entries])
    return stamps_insert_bulk(stamps)


def job_first_stamp(*, job: Job, event: str, actor: str, details: dict[str, Any] | None = None) -> AuditStamp:
    """The first stamp of a job already saved without one."""
    stamp = job_chain_write(job_id=job.id, event=event, actor=actor, to_status=job.status, details=details,
                            at=job.created_at, head=ChainHead())
    if stamp is None:
        raise RuntimeError(f"job {job.id} is missing or already has a chain")
    job.chain_seq, job.chain_hash = stamp.seq, stamp.hash
    return stamp


# Rows per statement when heads are written in bulk.
HEADS_CHUNK = 5000


def jobs_stamp_bulk(entries: list[dict[str, Any]], *, heads: dict[str, ChainHead]) -> int:
    """One stamp on each of many jobs whose rows the caller has locked, heads read with the lock.

    Each entry has the keyword arguments of :func:`job_stamp` but ``head``. The stamps go in
    with one ``COPY`` and the new heads with one UPDATE per chunk, in the caller's transaction.
    """
    if not entries:
        return 0
    rows = stamps_build_bulk(entries, heads=heads)
    _heads_write([(r.job_id, r.seq, r.hash) for r in rows])
    return stamps_insert_bulk(rows)


# PostgreSQL: many rows' heads in one statement, the values passed as three arrays.
_HEADS_SQL_PG = """
UPDATE {job} AS j SET chain_seq = v.seq, chain_hash = v.hash
FROM unnest(%s::varchar[], %s::integer[], %s::varchar[]) AS v(id, seq, hash)
WHERE j.id = v.id
"""


def _heads_write(rows: list[tuple[str, int, str]]) -> None:
    if connection.vendor == "postgresql":
        sql = _HEADS_SQL_PG.format(job=connection.ops.quote_name(Job._meta.db_table))
        with connection.cursor() as cursor:
            for start in range(0, len(rows), HEADS_CHUNK):
                chunk = rows[start:start + HEADS_CHUNK]
                cursor.execute(sql, [[r[0] for r in chunk], [r[1] for r in chunk], [r[2] for r in chunk]])
        return
    Job.objects.bulk_update([Job(pk=job_id, chain_seq=seq, chain_hash=digest) for job_id, seq, digest in rows],
                            ["chain_seq", "chain_hash"], batch_size=500)
