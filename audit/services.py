"""Writing audit stamps. The only module that inserts into ``audit_auditstamp``.

A stamp's hash covers its canonical content and the previous stamp's hash of the same job, so
any edit, insertion or deletion inside a chain is detected by ``verify_audit``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from django.db import IntegrityError, transaction
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
) -> AuditStamp:
    """Append one stamp to ``job_id``'s chain.

    Callers that change a job hold its row lock (the guarded UPDATE took it), so the chain head
    cannot move under them. Stamps for unknown ids (refused forged messages) have no row to
    lock; a concurrent append then fails the (job_id, seq) unique constraint and is retried.
    """
    details = json.loads(canonical_json(details or {}))
    for _ in range(10):
        head = (
            AuditStamp.objects.filter(job_id=job_id).order_by("-seq").values_list("seq", "hash").first()
        )
        seq, prev = (head[0] + 1, head[1]) if head else (1, "")
        created_at = at or timezone.now()
        digest = stamp_hash(
            job_id=job_id,
            seq=seq,
            created_at=created_at,
            actor=actor,
            event=event,
            from_status=from_status,
            to_status=to_status,
            details=details,
            prev_hash=prev,
        )
        try:
            with transaction.atomic():
                return AuditStamp.objects.create(
                    job_id=job_id,
                    seq=seq,
                    created_at=created_at,
                    actor=actor,
                    event=event,
                    from_status=from_status,
                    to_status=to_status,
                    details=details,
                    prev_hash=prev,
                    hash=digest,
                )
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
    for e in entries:
        seq0, prev = heads.get(e["job_id"], (0, ""))
        details = json.loads(canonical_json(e.get("details") or {}))
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
    AuditStamp.objects.bulk_create(rows, batch_size=1000)
    return len(rows)
