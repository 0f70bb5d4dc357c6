"""Writing a signed audit export (``manage.py export_audit``). Format: ``audit.export_format``."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from audit.export_format import (
    FORMAT,
    STAMP_FIELDS,
    VERSION,
    encode_line,
    signature_path,
    stamp_line,
    time_text,
)
from audit.models import AuditStamp
from audit.signing import ALGORITHM, key_id, signing_key_load


@dataclass
class ExportSummary:
    path: Path
    signature_path: Path
    stamps: int
    chains: int
    digest: str
    key_id: str


@dataclass
class _Chain:
    job_id: str
    first_seq: int
    start_prev_hash: str
    count: int = 0
    head_seq: int = 0
    head_hash: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"job_id": self.job_id, "first_seq": self.first_seq, "start_prev_hash": self.start_prev_hash,
                "count": self.count, "head_seq": self.head_seq, "head_hash": self.head_hash}


def _stamps(*, since: datetime | None, job_id: str | None) -> QuerySet[AuditStamp, tuple[Any, ...]]:
    qs = AuditStamp.objects.all()
    if job_id is not None:
        qs = qs.filter(job_id=job_id)
    if since is not None:
        # A stamp is exported when it, or an earlier stamp of its chain, is in the window: each
        # chain's exported part is contiguous from its first stamp at or after ``since``, even
        # if a later stamp carries an earlier time.
        qs = qs.filter(Exists(AuditStamp.objects.filter(
            job_id=OuterRef("job_id"), seq__lte=OuterRef("seq"), created_at__gte=since)))
    return qs.order_by("job_id", "seq").values_list(*STAMP_FIELDS)


def audit_export(
    *,
    out: Path,
    since: datetime | None = None,
    job_id: str | None = None,
    key: Ed25519PrivateKey | None = None,
    chunk_size: int = 2000,
) -> ExportSummary:
    """Write the stamps (all, one job's, or those since ``since``) as a signed export.

    Steps: (1) load the signing key (created under ``var/`` on first use); (2) write the header
    line; (3) stream the stamps in chain order with ``.iterator()`` (one query, one snapshot,
    constant memory) as stamp lines, hashing the bytes as they are written and noting each
    chain's start (first seq, the prev hash it links to), count and head; (4) write the
    manifest as the last line; (5) sign the file's SHA-256 digest with Ed25519 and write
    ``PATH.sig``. Both files are written under temporary names and renamed at the end, so an
    interrupted export leaves no file that looks complete.
    """
    signing_key = key or signing_key_load()
    kid = key_id(signing_key.public_key())
    out = Path(out)
    sig_out = signature_path(out)
    part = out.with_name(out.name + ".part")
    sig_part = sig_out.with_name(sig_out.name + ".part")
    hasher = hashlib.sha256()
    chains: list[_Chain] = []
    stamps = 0
    try:
        with part.open("wb") as handle:

            def write(obj: dict[str, object]) -> None:
                data = encode_line(obj)
                handle.write(data)
                hasher.update(data)

            write({"kind": "header", "format": FORMAT, "version": VERSION, "exported_at": time_text(timezone.now()),
                   "since": time_text(since) if since else None, "job_id": job_id, "key_id": kid})
            current: _Chain | None = None
            for values in _stamps(since=since, job_id=job_id).iterator(chunk_size=chunk_size):
                row = dict(zip(STAMP_FIELDS, values, strict=True))
                if current is None or row["job_id"] != current.job_id:
                    current = _Chain(job_id=row["job_id"], first_seq=row["seq"], start_prev_hash=row["prev_hash"])
                    chains.append(current)
                current.count += 1
                current.head_seq, current.head_hash = row["seq"], row["hash"]
                stamps += 1
                write(stamp_line(row))
            write({"kind": "manifest", "stamps": stamps, "chains": [c.as_dict() for c in chains]})
            handle.flush()
            os.fsync(handle.fileno())
        digest = hasher.digest()
        signature = {
            "algorithm": ALGORITHM, "digest_algorithm": "sha256", "digest": digest.hex(),
            "signature": base64.b64encode(signing_key.sign(digest)).decode("ascii"), "key_id": kid,
            "file": out.name,
        }
        sig_part.write_text(json.dumps(signature, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(part, out)
        os.replace(sig_part, sig_out)
    finally:
        for leftover in (part, sig_part):
            leftover.unlink(missing_ok=True)
    return ExportSummary(path=out, signature_path=sig_out, stamps=stamps, chains=len(chains),
                         digest=digest.hex(), key_id=kid)
