"""Writing audit stamps. The only module that inserts into ``audit_auditstamp``.

A stamp's hash covers its canonical content and the previous stamp's hash of the same job, so
any edit, insertion or deletion inside a chain is detected by ``verify_audit``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max, QuerySet
from django.utils import timezone

from audit.models import AuditStamp

SYSTEM_ACTOR = "system"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def stamp_hash(
    *,
    job_id: str,
    seq: int,
    created_at: datetime,
    actor: str,
    event: str,
    from_status: str,
    to_status: str,
    details: dict[str, Any],
    prev_hash: str,
) -> str:
    body = canonical_json(
        {
            "job_id": job_id,
            "seq": seq,
            "created_at": created_at.astimezone(UTC).isoformat(timespec="microseconds"),
            "actor": actor,
            "event": event,
            "from": from_status,
            "to": to_status,
            "details": details,
            "prev": prev_hash,
        }
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def stamp_append(
    *,
    job_id: str,
    event: str,
    actor: str = SYSTEM_ACTOR,
    from_status: str = "",
    to_status: str = "",
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
    genesis: bool = False,
) -> AuditStamp:
    """Append one stamp to ``job_id``'s chain.

    ``genesis=True`` writes seq 1 of a chain whose id was created in the caller's uncommitted
    transaction (a new job): no other writer can know the id yet, so there is no head to read
    and no conflict to retry.

    Callers that change a job hold its row lock (the guarded UPDATE took it), so the chain head
    cannot move under them. Stamps for unknown ids (refused forged messages) have no row to
    lock; a concurrent append then fails the (job_id, seq) unique constraint and is retried.
    """
    details = json.loads(canonical_json(details or {}))
    if genesis:
        fields0: dict[str, Any] = {
            "job_id": job_id, "seq": 1, "created_at": at or timezone.now(), "actor": actor, "event": event,
            "from_status": from_status, "to_status": to_status, "details": details, "prev_hash": "",
        }
        return AuditStamp.objects.create(**fields0, hash=stamp_hash(**fields0))
    for _ in range(10):
        head = (
            AuditStamp.objects.filter(job_id=job_id).order_by("-seq").values_list("seq", "hash").first()
        )
        seq, prev = (head[0] + 1, head[1]) if head else (1, "")
        fields: dict[str, Any] = {
            "job_id": job_id,
            "seq": seq,
            "created_at": at or timezone.now(),
            "actor": actor,
            "event": event,
            "from_status": from_status,
            "to_status": to_status,
            "details": details,
            "prev_hash": prev,
        }
        try:
            with transaction.atomic():
                return AuditStamp.objects.create(**fields, hash=stamp_hash(**fields))
        except IntegrityError:
            continue
    raise RuntimeError(f"could not append audit stamp for {job_id}: chain head kept moving")


def stamps_append_bulk(entries: list[dict[str, Any]]) -> int:
    """Append one stamp to each of many *different* jobs in one INSERT (bulk cancel).

    Each entry has the keyword arguments of :func:`stamp_append`. The caller holds the jobs'
    row locks (it just updated them), so no head moves meanwhile.
    """
    if not entries:
        return 0
    ids = [e["job_id"] for e in entries]
    heads: dict[str, tuple[int, str]] = {}
    for job_id, seq, digest in (
        AuditStamp.objects.filter(job_id__in=ids).order_by("job_id", "-seq").distinct("job_id")
        if transaction.get_connection().vendor == "postgresql"
        else AuditStamp.objects.filter(job_id__in=ids).order_by("job_id", "seq")
    ).values_list("job_id", "seq", "hash"):
        heads[job_id] = (seq, digest)
    rows = []
    now = timezone.now()
    normalized: dict[int, Any] = {}  # bulk callers pass one details dict for every entry
    for e in entries:
        seq0, prev = heads.get(e["job_id"], (0, ""))
        raw = e.get("details") or {}
        if id(raw) not in normalized:
            normalized[id(raw)] = json.loads(canonical_json(raw))
        details = normalized[id(raw)]
        fields = {
            "job_id": e["job_id"],
            "seq": seq0 + 1,
            "created_at": now,
            "actor": e.get("actor", SYSTEM_ACTOR),
            "event": e["event"],
            "from_status": e.get("from_status", ""),
            "to_status": e.get("to_status", ""),
            "details": details,
            "prev_hash": prev,
        }
        rows.append(AuditStamp(**fields, hash=stamp_hash(**fields)))
    connection = transaction.get_connection()
    if connection.vendor == "postgresql":
        _copy_stamps(connection, rows)
    else:
        AuditStamp.objects.bulk_create(rows, batch_size=1000)
    return len(rows)


_STAMP_COLUMNS = ("job_id", "seq", "created_at", "actor", "event", "from_status", "to_status", "details",
                  "prev_hash", "hash")


def _copy_stamps(connection: Any, rows: list[AuditStamp]) -> None:
    """Insert stamps with ``COPY … FROM STDIN`` (PostgreSQL).

    For thousands of rows a multi-row INSERT spends most of its time binding parameters; COPY
    streams the rows instead (psycopg ``Cursor.copy``), in the caller's transaction.
    """
    table = connection.ops.quote_name(AuditStamp._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(c) for c in _STAMP_COLUMNS)
    with connection.cursor() as cursor, cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for r in rows:
            copy.write_row((r.job_id, r.seq, r.created_at, r.actor, r.event, r.from_status, r.to_status,
                            canonical_json(r.details), r.prev_hash, r.hash))


RETENTION_CHAIN = "retention"


@dataclass
class PurgeReport:
    before: datetime
    dry_run: bool
    jobs: int = 0
    chains: int = 0
    stamps: int = 0
    batches: int = 0
    stopped: bool = False
    retention_stamps: list[int] = field(default_factory=list)


def _purge_querysets(*, before: datetime) -> tuple[QuerySet[Any], QuerySet[Any]]:
    """(job ids, job-less chain ids) past retention: terminal jobs finished before ``before``,
    and chains with no job row (refused messages for unknown ids) last stamped before it."""
    from jobs.models import TERMINAL_STATUSES, Job

    jobs = Job.objects.filter(status__in=list(TERMINAL_STATUSES), finished_at__lt=before).order_by("pk")
    orphans = (
        AuditStamp.objects.exclude(job_id=RETENTION_CHAIN)
        .exclude(job_id__in=Job.objects.values("pk"))
        .values("job_id").annotate(last=Max("created_at")).filter(last__lt=before)
        .order_by("job_id")
    )
    return jobs.values_list("pk", flat=True), orphans.values_list("job_id", flat=True)


def stamps_purge(
    *,
    before: datetime,
    dry_run: bool,
    batch_size: int = 500,
    should_stop: Callable[[], bool] | None = None,
) -> PurgeReport:
    """Retention: delete terminal jobs finished before ``before``, with their runs and stamps.

    The only sanctioned way to delete stamps. Steps, per batch of ``batch_size`` chains, each
    in one transaction: (1) pick the chains (terminal jobs past retention, and job-less refusal
    chains past retention); (2) record each chain's head (last seq and hash); (3) set the
    transaction-local flag ``audit.retention`` that the PostgreSQL trigger honours (it still
    refuses every UPDATE); (4) delete the stamps, then the job rows (runs and approval requests
    cascade; the effect ledger keeps its rows with the job reference cleared); (5) append a
    stamp to the ``retention`` chain listing the purged chains and their heads, so the purge
    itself is on the record and verifiable. ``dry_run`` only counts. ``should_stop`` is polled
    between batches (SIGTERM from cron stops cleanly after the current batch).
    """
    from jobs.models import TERMINAL_STATUSES, Job

    job_ids, orphan_ids = _purge_querysets(before=before)
    if dry_run:
        report = PurgeReport(before=before, dry_run=True, jobs=job_ids.count())
        report.chains = report.jobs + orphan_ids.count()
        report.stamps = (
            AuditStamp.objects.filter(job_id__in=job_ids).count()
            + AuditStamp.objects.filter(job_id__in=list(orphan_ids)).count()
        )
        return report
    report = PurgeReport(before=before, dry_run=False)
    previous: list[str] = []
    while True:
        if should_stop is not None and should_stop():
            report.stopped = True
            break
        with transaction.atomic():
            # Each batch deletes what it picked, so the next query starts from the top again.
            picked = sorted(set(job_ids[:batch_size]) | set(orphan_ids[:batch_size]))[:batch_size]
            if not picked or picked == previous:
                break
            previous = picked
            # Lock the job rows and re-check them: a dead-lettered job replayed meanwhile is
            # no longer terminal and stays (its replay waits on the lock, then finds the row).
            locked = set(
                Job.objects.select_for_update()
                .filter(pk__in=picked, status__in=list(TERMINAL_STATUSES), finished_at__lt=before)
                .values_list("pk", flat=True)
            )
            with_rows = set(Job.objects.filter(pk__in=picked).values_list("pk", flat=True))
            ids = [i for i in picked if i in locked or i not in with_rows]
            heads = {
                job_id: (seq, digest)
                for job_id, seq, digest in AuditStamp.objects.filter(job_id__in=ids)
                .order_by("job_id", "seq").values_list("job_id", "seq", "hash")
            }
            stamp_count = AuditStamp.objects.filter(job_id__in=ids).count()
            report.batches += 1
            report.chains += len(ids)
            report.stamps += stamp_count
            report.jobs += len(locked)
            connection = transaction.get_connection()
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL audit.retention = 'on'")
            AuditStamp.objects.filter(job_id__in=ids).delete()
            Job.objects.filter(pk__in=locked).delete()
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL audit.retention = 'off'")
            stamp = stamp_append(
                job_id=RETENTION_CHAIN,
                event="retention_purge",
                actor="system:retention",
                details={
                    "before": before.isoformat(),
                    "jobs": len(locked),
                    "stamps": stamp_count,
                    "chains": [
                        {"job_id": job_id, "last_seq": heads[job_id][0], "last_hash": heads[job_id][1]}
                        if job_id in heads else {"job_id": job_id, "last_seq": 0, "last_hash": ""}
                        for job_id in ids
                    ],
                },
            )
            report.retention_stamps.append(stamp.seq)
    return report
