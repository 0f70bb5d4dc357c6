"""Verifying a signed audit export offline: no database, only the files and a public key.

Pure functions over the export's bytes. Every stamp's hash is recomputed with
``audit.services.stamp_hash`` — the function that wrote it — so the export proves exactly what
``verify_audit`` proves on the database. Format: ``audit.export_format``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.export_format import FORMAT, VERSION, signature_path
from audit.services import stamp_hash
from audit.signing import ALGORITHM, key_id, signature_valid

_STR_FIELDS = ("job_id", "created_at", "actor", "event", "from_status", "to_status", "prev_hash", "hash")


@dataclass(frozen=True)
class Problem:
    """Something that does not verify; ``line`` is 1-based, ``None`` for the signature."""

    line: int | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


@dataclass
class ExportCheck:
    path: Path
    lines: int = 0
    stamps: int = 0
    chains: int = 0
    digest: str = ""
    signed_by: str = ""
    verified_with: str = ""
    signature_ok: bool = False
    signature_problem: str = ""
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.signature_ok and not self.problems

    @property
    def first_problem(self) -> Problem | None:
        lined = [p for p in self.problems if p.line is not None]
        return min(lined, key=lambda p: p.line or 0) if lined else (self.problems[0] if self.problems else None)


def _digest_and_last_line(path: Path) -> tuple[str, int, bytes]:
    hasher = hashlib.sha256()
    count, last = 0, b""
    with path.open("rb") as handle:
        for raw in handle:
            hasher.update(raw)
            count += 1
            last = raw
    return hasher.hexdigest(), count, last


def check_signature(
    *, digest_hex: str, signature_document: bytes, public_key: Ed25519PublicKey
) -> tuple[bool, str, str]:
    """(valid, problem, signer key id) for a detached signature over ``digest_hex``.

    Tells apart a file changed after signing (the signature is good for the digest it names,
    which is not the file's) from a signature made with another key.
    """
    try:
        doc = json.loads(signature_document)
        signed_digest = str(doc["digest"])
        signature = base64.b64decode(str(doc["signature"]), validate=True)
        algorithm = doc.get("algorithm")
        signer = str(doc.get("key_id", ""))
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        return False, f"signature file is malformed: {exc}", ""
    if algorithm != ALGORITHM or doc.get("digest_algorithm") != "sha256":
        return False, f"unsupported signature: {algorithm} over {doc.get('digest_algorithm')}", signer
    mine = key_id(public_key)
    if signature_valid(public_key, signature, bytes.fromhex(digest_hex)):
        return True, "", signer
    try:
        names_valid = signature_valid(public_key, signature, bytes.fromhex(signed_digest))
    except ValueError:
        names_valid = False
    if names_valid:
        return False, (f"signature does not match the file: the file changed after signing (its SHA-256 is "
                       f"{digest_hex}, the signature covers {signed_digest})"), signer
    if signer and signer != mine:
        return False, (f"signature does not verify with public key {mine}: the export was signed by key "
                       f"{signer} (wrong public key?)"), signer
    return False, f"signature does not verify with public key {mine} (file or signature changed, or wrong key)", signer


def _parse(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"not valid JSON ({exc})"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    return obj, ""


def _manifest_chains(manifest: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], str]:
    chains = manifest.get("chains")
    if not isinstance(chains, list) or not isinstance(manifest.get("stamps"), int):
        return {}, "the manifest needs a list of chains and a stamp count"
    by_id: dict[str, dict[str, Any]] = {}
    for entry in chains:
        ok = isinstance(entry, dict) and isinstance(entry.get("job_id"), str) and all(
            isinstance(entry.get(k), int) for k in ("first_seq", "count", "head_seq")
        ) and all(isinstance(entry.get(k), str) for k in ("start_prev_hash", "head_hash"))
        if not ok:
            return {}, f"malformed manifest entry {entry!r}"
        if entry["job_id"] in by_id:
            return {}, f"chain {entry['job_id']} is listed twice in the manifest"
        by_id[entry["job_id"]] = entry
    return by_id, ""


def _stamp_problem(obj: dict[str, Any]) -> str:
    if obj.get("kind") != "stamp":
        return f"expected a stamp line, found kind {obj.get('kind')!r}"
    for name in _STR_FIELDS:
        if not isinstance(obj.get(name), str):
            return f"field {name!r} is missing or not a string"
    if not isinstance(obj.get("seq"), int) or isinstance(obj.get("seq"), bool):
        return "field 'seq' is missing or not an integer"
    if not isinstance(obj.get("details"), dict):
        return "field 'details' is missing or not an object"
    try:
        datetime.fromisoformat(obj["created_at"])
    except ValueError:
        return f"created_at {obj['created_at']!r} is not an ISO 8601 time"
    return ""


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        yield from enumerate(handle, start=1)


def export_verify(*, path: Path, public_key: Ed25519PublicKey, signature_file: Path | None = None) -> ExportCheck:
    """Verify an export: the signature, every hash link, and each chain's continuity.

    Steps: (1) hash the file and read its last line (the manifest); (2) check the detached
    signature over that digest with ``public_key``; (3) line 1 must be a header of this format;
    (4) stream the stamp lines: each must be well formed; chains must be contiguous and each
    one listed in the manifest; a chain's first line must have the manifest's ``first_seq`` and
    ``start_prev_hash``, each later line the next seq and the previous line's hash as
    ``prev_hash``; every ``hash`` must equal ``stamp_hash`` recomputed from the line; (5) when a
    chain ends, its count and head (seq, hash) must be the manifest's; (6) every manifest chain
    must be present and the total must match. After a problem the check goes on from the line
    as it is, so one changed line yields one problem, and ``first_problem`` names the first bad
    line.
    """
    report = ExportCheck(path=path)
    report.digest, report.lines, last = _digest_and_last_line(path)
    report.verified_with = key_id(public_key)
    sig_file = signature_file or signature_path(path)
    try:
        sig_bytes = sig_file.read_bytes()
    except OSError as exc:
        report.signature_problem = f"cannot read the signature file {sig_file}: {exc.strerror or exc}"
    else:
        report.signature_ok, report.signature_problem, report.signed_by = check_signature(
            digest_hex=report.digest, signature_document=sig_bytes, public_key=public_key)

    def problem(line: int | None, message: str) -> None:
        report.problems.append(Problem(line, message))

    if report.lines < 2:
        problem(report.lines or 1, "an export has at least a header line and a manifest line")
        return report
    manifest_line = report.lines
    manifest, error = _parse(last)
    chains: dict[str, dict[str, Any]] = {}
    if manifest is None or manifest.get("kind") != "manifest":
        problem(manifest_line, f"the last line must be the manifest ({error or 'kind is not manifest'})")
        manifest = None
    else:
        chains, error = _manifest_chains(manifest)
        if error:
            problem(manifest_line, error)
            manifest = None

    current: str | None = None
    entry: dict[str, Any] | None = None
    expect_seq, expect_prev = 1, ""
    count, head_seq, head_hash = 0, 0, ""
    seen: set[str] = set()

    def close_chain(at_line: int) -> None:
        """The chain that just ended must end where the manifest says it does."""
        if current is None or entry is None:
            return
        if (count, head_seq, head_hash) != (entry["count"], entry["head_seq"], entry["head_hash"]):
            problem(at_line, f"chain {current} ends before this line at seq {head_seq} with {count} stamp(s) "
                             f"(head {head_hash[:16]}…); the manifest says seq {entry['head_seq']} with "
                             f"{entry['count']} (head {entry['head_hash'][:16]}…): stamps missing, added or moved")

    for number, raw in _lines(path):
        if number == manifest_line:
            break
        obj, error = _parse(raw)
        if number == 1:
            if obj is None or obj.get("kind") != "header":
                problem(1, f"the first line must be the export header ({error or 'kind is not header'})")
            elif obj.get("format") != FORMAT or obj.get("version") != VERSION:
                problem(1, f"unknown export format {obj.get('format')!r} version {obj.get('version')!r}")
            continue
        if obj is None:
            problem(number, error)
            continue
        error = _stamp_problem(obj)
        if error:
            problem(number, error)
            continue
        job_id, seq = obj["job_id"], obj["seq"]
        if job_id != current:
            close_chain(number)
            if job_id in seen:
                problem(number, f"chain {job_id} appears again after other chains; a chain's stamps must be "
                                "contiguous (lines moved?)")
            seen.add(job_id)
            current, count = job_id, 0
            entry = chains.get(job_id)
            if entry is None and manifest is not None:
                problem(number, f"chain {job_id} is not in the manifest")
            expect_seq = entry["first_seq"] if entry else 1
            expect_prev = entry["start_prev_hash"] if entry else ""
        report.stamps += 1
        count += 1
        recomputed = stamp_hash(
            job_id=job_id, seq=seq, created_at=datetime.fromisoformat(obj["created_at"]), actor=obj["actor"],
            event=obj["event"], from_status=obj["from_status"], to_status=obj["to_status"],
            details=obj["details"], prev_hash=obj["prev_hash"],
        )
        if seq != expect_seq:
            problem(number, f"chain {job_id}: expected seq {expect_seq}, found {seq} "
                            "(a line is missing, duplicated or out of order)")
        elif obj["prev_hash"] != expect_prev:
            problem(number, f"chain {job_id} seq {seq}: prev_hash {obj['prev_hash'][:16]}… is not the hash "
                            f"before it ({expect_prev[:16] or 'empty'}…)")
        elif recomputed != obj["hash"]:
            problem(number, f"chain {job_id} seq {seq}: hash does not match the stamp's content "
                            f"(recomputed {recomputed[:16]}…, stored {obj['hash'][:16]}…)")
        expect_seq, expect_prev = seq + 1, obj["hash"]
        head_seq, head_hash = seq, obj["hash"]

    close_chain(manifest_line)
    report.chains = len(seen)
    if manifest is not None:
        missing = [job_id for job_id in chains if job_id not in seen]
        if missing:
            problem(manifest_line, f"chain {missing[0]} is in the manifest but has no stamps in the file"
                                   + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        if manifest["stamps"] != report.stamps:
            problem(manifest_line, f"the manifest counts {manifest['stamps']} stamps, the file has {report.stamps}")
    report.problems.sort(key=lambda p: p.line or 0)
    return report
