"""The signed audit export format, shared by the writer (``audit.export``) and the offline
verifier (``audit.export_verify``). Pure: no database.

An export is two files (docs/governance.md, "Signed audit export"):

``PATH`` — UTF-8 JSON lines, each the canonical JSON (``audit.services.canonical_json``) of one
object with a ``kind``:

1. ``header``: ``format``, ``version``, ``exported_at``, ``since``, ``job_id`` (the filters),
   ``key_id`` of the signing key;
2. one ``stamp`` line per audit stamp, chains one after another in chain order (by job id, then
   ``seq``), with every field the stamp hash covers plus ``prev_hash`` and ``hash``;
3. ``manifest`` (always the last line): ``stamps`` (total) and ``chains``, one entry per chain in
   file order — ``job_id``, ``first_seq`` and ``start_prev_hash`` (where the exported part of
   the chain starts: ``1`` and ``""`` for a whole chain), ``count``, ``head_seq``, ``head_hash``.

``PATH.sig`` — one JSON object: ``algorithm`` (``ed25519``), ``digest_algorithm`` (``sha256``),
``digest`` (hex SHA-256 of ``PATH``'s bytes), ``signature`` (base64 Ed25519 signature over the
32 raw digest bytes), ``key_id``, ``file`` (the export's file name).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit.services import canonical_json

FORMAT = "jobplatform-audit-export"
VERSION = 1
SIGNATURE_SUFFIX = ".sig"
# The stamp fields on a stamp line, in ``AuditStamp`` terms.
STAMP_FIELDS = ("job_id", "seq", "created_at", "actor", "event", "from_status", "to_status", "details",
                "prev_hash", "hash")


def signature_path(path: Path) -> Path:
    return path.with_name(path.name + SIGNATURE_SUFFIX)


def encode_line(obj: dict[str, Any]) -> bytes:
    return (canonical_json(obj) + "\n").encode("utf-8")


def time_text(value: datetime) -> str:
    """Times as ``stamp_hash`` writes them: UTC, ISO 8601, microseconds."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def stamp_line(row: dict[str, Any]) -> dict[str, Any]:
    line = {"kind": "stamp", **{f: row[f] for f in STAMP_FIELDS}}
    line["created_at"] = time_text(row["created_at"])
    return line
