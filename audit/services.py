"""Writing audit stamps. The only module that inserts into ``audit_auditstamp``.

A stamp's hash covers its canonical content and the previous stamp's hash of the same job, so
any edit, insertion or deletion inside a chain is detected by ``verify_audit``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max, QuerySet
from django.utils import timezone

from audit.events import Event
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


def _stamp_hash_of_text(
    *, job_id: str, seq: int, created_at: datetime, actor: str, event: str, from_status: str, to_status: str,
    details_text: str, prev_hash: str,
) -> str:
    """:func:`stamp_hash` for details already in canonical form (``canonical_json(details)``),
    without serializing them again: the same body, its keys in the same sorted order."""

    text = encode_basestring  # json.dumps(value, ensure_ascii=False) for a str, without the machinery
    created = created_at.astimezone(UTC).isoformat(timespec="microseconds")
    body = (
        f'{{"actor":{text(actor)},"created_at":{text(created)},"details":{details_text},"event":{text(event)},'
        f'"from":{text(from_status)},"job_id":{text(job_id)},"prev":{text(prev_hash)},"seq":{int(seq)},'
        f'"to":{text(to_status)}}}'
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


def stamps_append_genesis_bulk(entries: list[dict[str, Any]]) -> int:
    """Write the first stamp (seq 1) of many new chains in one statement (batch submit).

    The bulk twin of ``stamp_append(genesis=True)``: each entry has its keyword arguments
    (``job_id``, ``event``, ``actor``, ``from_status``, ``to_status``, ``details``, ``at``); every
    id was created in the caller's uncommitted transaction, so there is no head to read. Rows
    go straight to COPY on PostgreSQL (no model instance per stamp).
    """
    rows: list[tuple[dict[str, Any], str, str]] = []
    for e in entries:
        fields = {
            "job_id": e["job_id"],
            "seq": 1,
            "created_at": e.get("at") or timezone.now(),
            "actor": e.get("actor", SYSTEM_ACTOR),
            "event": e["event"],
            "from_status": e.get("from_status", ""),
            "to_status": e.get("to_status", ""),
            "prev_hash": "",
        }
        # What stamp_append stores and hashes: the details in canonical form.
        text = canonical_json(e.get("details") or {})
        rows.append((fields, text, _stamp_hash_of_text(**fields, details_text=text)))
    connection = transaction.get_connection()
    if connection.vendor != "postgresql":
        AuditStamp.objects.bulk_create(
            [AuditStamp(**f, details=json.loads(text), hash=digest) for f, text, digest in rows], batch_size=1000)
        return len(rows)
    table = connection.ops.quote_name(AuditStamp._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(c) for c in _STAMP_COLUMNS)
    with connection.cursor() as cursor, cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for f, text, digest in rows:
            copy.write_row((f["job_id"], 1, f["created_at"], f["actor"], f["event"], f["from_status"],
                            f["to_status"], text, "", digest))
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


def orphan_chains(*, before: datetime, subject_ids: QuerySet[Any]) -> QuerySet[Any]:
    """Chain ids with no subject row (e.g. refusals of messages for unknown job ids) whose last
    stamp is older than ``before``: past retention, nothing else will ever delete them."""
    return (
        AuditStamp.objects.exclude(job_id=RETENTION_CHAIN)
        .exclude(job_id__in=subject_ids)
        .values("job_id").annotate(last=Max("created_at")).filter(last__lt=before)
        .order_by("job_id").values_list("job_id", flat=True)
    )


def chains_purge(*, chain_ids: list[str], before: datetime, subjects_deleted: int) -> tuple[int, AuditStamp]:
    """Delete whole chains: the only sanctioned way stamps leave the table.

    Runs in the caller's transaction, which deletes the subjects' own rows beside it. Steps:
    (1) record each chain's head (last seq and hash); (2) set the transaction-local flag
    ``audit.retention`` that the PostgreSQL trigger honours for DELETE (it still refuses every
    UPDATE); (3) delete the stamps; (4) append a stamp to the ``retention`` chain listing the
    purged chains and their heads, so the purge itself is on the record and verifiable.
    Returns (stamps deleted, the retention stamp).
    """
    heads = {
        job_id: (seq, digest)
        for job_id, seq, digest in AuditStamp.objects.filter(job_id__in=chain_ids)
        .order_by("job_id", "seq").values_list("job_id", "seq", "hash")
    }
    connection = transaction.get_connection()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL audit.retention = 'on'")
    stamp_count, _ = AuditStamp.objects.filter(job_id__in=chain_ids).delete()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL audit.retention = 'off'")
    stamp = stamp_append(
        job_id=RETENTION_CHAIN,
        event=Event.RETENTION_PURGE,
        actor="system:retention",
        details={
            "before": before.isoformat(),
            "jobs": subjects_deleted,
            "stamps": stamp_count,
            "chains": [
                {"job_id": job_id, "last_seq": heads[job_id][0], "last_hash": heads[job_id][1]}
                if job_id in heads else {"job_id": job_id, "last_seq": 0, "last_hash": ""}
                for job_id in chain_ids
            ],
        },
    )
    return stamp_count, stamp


