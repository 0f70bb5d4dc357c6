"""Signed audit export: written from the database, verified offline from the files alone."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from rest_framework.test import APIClient

from audit.export import audit_export
from audit.export_verify import export_verify
from audit.models import AuditStamp
from audit.services import stamp_append
from audit.signing import key_id, public_key_pem, public_key_raw, signing_key_load

T0 = timezone.now().replace(microsecond=0) - timedelta(days=3)


@pytest.fixture(autouse=True)
def key_path(tmp_path: Path, settings: Any) -> Path:
    path = tmp_path / "secrets" / "audit_signing_key.pem"
    settings.AUDIT_SIGNING_KEY_PATH = path
    return path


@pytest.fixture
def chains(db: None) -> dict[str, list[AuditStamp]]:
    """Three chains: job_a (4 stamps), job_b (3), job_c (2), with explicit times an hour apart.

    In an export of everything the lines are: 1 header, 2-5 job_a, 6-8 job_b, 9-10 job_c,
    11 manifest.
    """
    made: dict[str, list[AuditStamp]] = {}
    plan: dict[str, list[tuple[str, str, str, dict[str, Any]]]] = {
        "job_a": [("submitted", "", "queued", {"policy": {"action": "allow"}, "amount": 12.5, "name": "Zoë"}),
                  ("claimed", "queued", "running", {"worker": "w1"}),
                  ("stage_completed", "running", "queued", {"tools": ["crm.read"], "retry_count": 0}),
                  ("succeeded", "running", "succeeded", {"nested": {"list": [1, 2.25, None, True]}})],
        "job_b": [("submitted", "", "pending_approval", {}),
                  ("approval_granted", "", "", {"comment": "ok ✓"}),
                  ("approved", "pending_approval", "queued", {"approvers": ["r1"]})],
        "job_c": [("blocked", "", "blocked", {"reason": "policy: incident 42"}),
                  ("note", "", "", {"n": 1})],
    }
    for c, (job_id, events) in enumerate(plan.items()):
        made[job_id] = [
            stamp_append(job_id=job_id, event=event, actor=f"principal:p{c}", from_status=from_status,
                         to_status=to_status, details=details, at=T0 + timedelta(hours=i))
            for i, (event, from_status, to_status, details) in enumerate(events)
        ]
    return made


def export(tmp_path: Path, name: str = "audit.jsonl", **kwargs: Any) -> Path:
    out = tmp_path / name
    audit_export(out=out, **kwargs)
    return out


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def verify(path: Path, public_key: Any = None) -> Any:
    return export_verify(path=path, public_key=public_key or signing_key_load(create=False).public_key())


def run_verify_command(path: Path, *extra: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("verify_audit", "--export", str(path), *extra, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# --- a good export ------------------------------------------------------------------------------


def test_an_export_verifies(chains: Any, tmp_path: Path, key_path: Path, django_assert_num_queries: Any) -> None:
    # given stamps in three chains, and no signing key yet
    assert not key_path.exists()
    # when they are exported
    out = export(tmp_path)
    # then the key was created 0600, and the file holds a header, the stamps in chain order, a manifest
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    lines = [json.loads(x) for x in lines_of(out)]
    assert [x["kind"] for x in lines] == ["header"] + ["stamp"] * 9 + ["manifest"]
    assert [(x["job_id"], x["seq"]) for x in lines[1:-1]] == [
        ("job_a", 1), ("job_a", 2), ("job_a", 3), ("job_a", 4), ("job_b", 1), ("job_b", 2), ("job_b", 3),
        ("job_c", 1), ("job_c", 2)]
    manifest = lines[-1]
    assert manifest["stamps"] == 9
    assert manifest["chains"][0] == {"job_id": "job_a", "first_seq": 1, "start_prev_hash": "", "count": 4,
                                     "head_seq": 4, "head_hash": chains["job_a"][-1].hash}
    assert Path(f"{out}.sig").exists()
    # and it verifies offline: no query at all
    with django_assert_num_queries(0):
        report = verify(out)
        stdout, _ = run_verify_command(out)
    assert report.ok, report.problems
    assert (report.stamps, report.chains, report.lines) == (9, 3, 11)
    assert report.signed_by == report.verified_with == key_id(signing_key_load().public_key())
    assert "export OK" in stdout and "stamps: 9" in stdout


def test_the_command_writes_and_reports(chains: Any, tmp_path: Path) -> None:
    out = StringIO()
    call_command("export_audit", "--out", str(tmp_path / "all.jsonl"), stdout=out)
    assert "exported 9 stamp(s) in 3 chain(s)" in out.getvalue()
    assert f"key {key_id(signing_key_load().public_key())}" in out.getvalue()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["all.jsonl", "all.jsonl.sig"]


def test_verification_needs_no_database(chains: Any, tmp_path: Path) -> None:
    # given an export and its public key in a file
    out = export(tmp_path)
    pem = tmp_path / "public.pem"
    pem.write_text(public_key_pem(signing_key_load().public_key()))
    bad = tmp_path / "bad.jsonl"
    lines = lines_of(out)
    rewrite(bad, [*lines[:3], *lines[4:]])
    (tmp_path / "bad.jsonl.sig").write_bytes(Path(f"{out}.sig").read_bytes())
    # when verify_audit runs in a process whose database cannot be reached
    env = {**os.environ, "DATABASE_URL": "postgres://nobody@127.0.0.1:9/unreachable",
           "AUDIT_SIGNING_KEY_PATH": str(tmp_path / "no-such-key.pem")}
    base = [sys.executable, "manage.py", "verify_audit", "--public-key", str(pem), "--export"]
    cwd = Path(django_settings.BASE_DIR)
    good = subprocess.run([*base, str(out)], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    broken = subprocess.run([*base, str(bad)], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    # then the good export verifies and the broken one fails naming its first bad line
    assert good.returncode == 0, good.stderr
    assert "export OK" in good.stdout
    assert broken.returncode == 1
    assert "first bad line: line 4: chain job_a: expected seq 3, found 4" in broken.stderr


# --- tampering ----------------------------------------------------------------------------------


def test_a_one_byte_change_in_a_stamp_fails_at_its_line(chains: Any, tmp_path: Path) -> None:
    # given an export where one byte of line 3 (job_a seq 2, actor principal:p0) is changed
    out = export(tmp_path)
    lines = lines_of(out)
    assert b"principal:p0" in lines[2]
    lines[2] = lines[2].replace(b"principal:p0", b"principal:p1")
    rewrite(out, lines)
    # when verified
    report = verify(out)
    # then line 3's hash no longer matches and the signature no longer covers the file
    assert not report.ok
    assert str(report.first_problem).startswith("line 3: chain job_a seq 2: hash does not match the stamp's content")
    assert [p.line for p in report.problems] == [3]
    assert not report.signature_ok
    assert "the file changed after signing" in report.signature_problem
    with pytest.raises(CommandError, match="line 3: chain job_a seq 2: hash does not match"):
        run_verify_command(out)


def test_a_one_byte_change_outside_the_stamps_fails_the_signature(chains: Any, tmp_path: Path) -> None:
    # given an export whose header's format version is changed by one byte
    out = export(tmp_path)
    data = bytearray(out.read_bytes())
    position = data.index(b'"version":1') + len(b'"version":')
    data[position] = ord("2")
    out.write_bytes(bytes(data))
    # when verified
    report = verify(out)
    # then the signature fails and line 1 is named
    assert not report.signature_ok
    assert "changed after signing" in report.signature_problem
    assert str(report.first_problem).startswith("line 1: unknown export format")


def test_a_change_only_the_signature_can_see(chains: Any, tmp_path: Path) -> None:
    # given an export whose exported_at time is changed by one digit (still a valid header)
    out = export(tmp_path)
    lines = lines_of(out)
    header = json.loads(lines[0])
    stamp = header["exported_at"]
    changed = stamp[:-7] + ("1" if stamp[-7] != "1" else "2") + stamp[-6:]
    lines[0] = lines[0].replace(stamp.encode(), changed.encode())
    rewrite(out, lines)
    # when verified: every line is fine, but the signature does not cover the file
    report = verify(out)
    assert report.problems == []
    assert not report.ok
    assert "changed after signing" in report.signature_problem
    with pytest.raises(CommandError, match="changed after signing"):
        run_verify_command(out)


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        (2, "line 3: chain job_a: expected seq 2, found 3"),  # a middle stamp (line 3, job_a seq 2)
        (4, "line 5: chain job_a ends before this line at seq 3 with 3 stamp(s)"),  # job_a's last (line 5)
        (5, "line 6: chain job_b: expected seq 1, found 2"),  # job_b's first stamp (line 6)
        (10, "line 10: the last line must be the manifest"),  # the manifest itself (line 11)
    ],
)
def test_a_deleted_line_fails_naming_the_first_bad_line(chains: Any, tmp_path: Path, drop: int,
                                                        expected: str) -> None:
    # given an export with one line deleted (``drop`` is the 0-based index, i.e. line drop+1)
    out = export(tmp_path)
    lines = lines_of(out)
    del lines[drop]
    rewrite(out, lines)
    # when verified
    report = verify(out)
    # then it fails at the first line that no longer fits, and the signature fails too
    assert not report.ok
    assert str(report.first_problem).startswith(expected), report.problems
    assert not report.signature_ok
    with pytest.raises(CommandError, match="export does not verify: line"):
        run_verify_command(out)


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (2, "line 3: chain job_a: expected seq 2, found 3"),  # lines 3 and 4, inside job_a
        (4, "line 5: chain job_a ends before this line at seq 3"),  # lines 5 and 6: job_a's last, job_b's first
        (0, "line 1: the first line must be the export header"),  # header and first stamp
    ],
)
def test_a_reordered_pair_fails(chains: Any, tmp_path: Path, first: int, expected: str) -> None:
    # given an export with two adjacent lines swapped
    out = export(tmp_path)
    lines = lines_of(out)
    lines[first], lines[first + 1] = lines[first + 1], lines[first]
    rewrite(out, lines)
    # when verified
    report = verify(out)
    # then it fails at the first swapped line that no longer fits; the digest changed as well
    assert not report.ok
    assert str(report.first_problem).startswith(expected), report.problems
    assert not report.signature_ok


def test_a_wrong_key_fails_with_a_clear_message(chains: Any, tmp_path: Path) -> None:
    # given an untouched export, and someone else's public key
    out = export(tmp_path)
    other = Ed25519PrivateKey.generate().public_key()
    other_file = tmp_path / "other.pem"
    other_file.write_text(public_key_pem(other))
    # when verified with that key
    report = verify(out, other)
    # then the lines are fine but the signature is refused, naming both keys
    assert report.problems == []
    assert not report.signature_ok
    signer = key_id(signing_key_load().public_key())
    assert f"signed by key {signer} (wrong public key?)" in report.signature_problem
    assert key_id(other) in report.signature_problem
    with pytest.raises(CommandError, match="wrong public key"):
        run_verify_command(out, "--public-key", str(other_file))


def test_a_forged_signature_file_fails(chains: Any, tmp_path: Path) -> None:
    # given an export whose signature file was re-made with another key but claims the right key id
    out = export(tmp_path)
    sig_path = Path(f"{out}.sig")
    doc = json.loads(sig_path.read_text())
    forged = Ed25519PrivateKey.generate().sign(bytes.fromhex(doc["digest"]))
    doc["signature"] = base64.b64encode(forged).decode()
    sig_path.write_text(json.dumps(doc))
    report = verify(out)
    assert not report.signature_ok
    assert "does not verify with public key" in report.signature_problem
    # and a missing signature file is named
    sig_path.unlink()
    assert "cannot read the signature file" in verify(out).signature_problem


# --- partial exports ----------------------------------------------------------------------------


def test_a_since_export_starts_chains_where_the_window_starts(chains: Any, tmp_path: Path) -> None:
    # given stamps an hour apart from T0; a window from T0 + 1.5 h
    since = T0 + timedelta(minutes=90)
    # when exported with --since
    out = export(tmp_path, since=since)
    manifest = json.loads(lines_of(out)[-1])
    # then each chain starts at its first stamp in the window, linked to the hash before it
    assert manifest["chains"] == [
        {"job_id": "job_a", "first_seq": 3, "start_prev_hash": chains["job_a"][1].hash, "count": 2,
         "head_seq": 4, "head_hash": chains["job_a"][3].hash},
        {"job_id": "job_b", "first_seq": 3, "start_prev_hash": chains["job_b"][1].hash, "count": 1,
         "head_seq": 3, "head_hash": chains["job_b"][2].hash},
    ]
    assert verify(out).ok
    # and dropping the first exported stamp of a chain is caught
    lines = lines_of(out)
    del lines[1]
    rewrite(out, lines)
    assert str(verify(out).first_problem).startswith("line 2: chain job_a: expected seq 3, found 4")


def test_a_since_export_keeps_a_chain_contiguous_when_times_go_backwards(db: None, tmp_path: Path) -> None:
    # given a chain whose third stamp carries an earlier time than its second
    stamp_append(job_id="job_t", event="a", at=T0)
    stamp_append(job_id="job_t", event="b", at=T0 + timedelta(hours=2))
    stamp_append(job_id="job_t", event="c", at=T0 + timedelta(minutes=30))
    # when exported from T0 + 1 h
    out = export(tmp_path, since=T0 + timedelta(hours=1))
    # then seq 2 and 3 are both exported (from the first stamp in the window on), and it verifies
    assert [json.loads(x)["seq"] for x in lines_of(out)[1:-1]] == [2, 3]
    assert verify(out).ok


def test_a_job_export_holds_one_chain(chains: Any, tmp_path: Path) -> None:
    out = export(tmp_path, job_id="job_b")
    lines = [json.loads(x) for x in lines_of(out)]
    assert {x["job_id"] for x in lines[1:-1]} == {"job_b"}
    assert lines[0]["job_id"] == "job_b"
    assert verify(out).ok


def test_the_command_parses_since(chains: Any, tmp_path: Path) -> None:
    out = StringIO()
    call_command("export_audit", "--out", str(tmp_path / "s.jsonl"), "--since",
                 (T0 + timedelta(minutes=90)).isoformat(), "--job", "job_a", stdout=out)
    assert "exported 2 stamp(s) in 1 chain(s)" in out.getvalue()
    with pytest.raises(CommandError, match="not an ISO 8601"):
        call_command("export_audit", "--out", str(tmp_path / "x.jsonl"), "--since", "last week")


def test_an_empty_export_verifies(db: None, tmp_path: Path) -> None:
    out = export(tmp_path)
    assert verify(out).ok
    assert json.loads(lines_of(out)[-1]) == {"kind": "manifest", "stamps": 0, "chains": []}


# --- the public key -----------------------------------------------------------------------------


def test_public_key_endpoint_serves_the_signing_key(chains: Any, tmp_path: Path) -> None:
    # given an export
    out = export(tmp_path)
    # when anyone (no credentials, or a wrong token) asks for the public key
    answer = APIClient().get("/api/v1/audit/public-key")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert client.get("/api/v1/audit/public-key").status_code == 200
    # then it is the key that signed the export, in PEM and raw base64
    assert answer.status_code == 200
    doc = answer.json()
    public = signing_key_load().public_key()
    assert doc["algorithm"] == "ed25519"
    assert doc["key_id"] == key_id(public)
    assert doc["public_key_pem"] == public_key_pem(public)
    assert base64.b64decode(doc["public_key_base64"]) == public_key_raw(public)
    # and each form works as --public-key
    for name, content in (("doc.json", answer.content), ("key.pem", doc["public_key_pem"].encode()),
                          ("key.b64", doc["public_key_base64"].encode())):
        (tmp_path / name).write_bytes(content)
        stdout, _ = run_verify_command(out, "--public-key", str(tmp_path / name))
        assert "export OK" in stdout


def test_verify_without_a_key_does_not_create_one(chains: Any, tmp_path: Path, key_path: Path, settings: Any) -> None:
    out = export(tmp_path)
    settings.AUDIT_SIGNING_KEY_PATH = tmp_path / "elsewhere" / "missing.pem"
    with pytest.raises(CommandError, match="pass --public-key"):
        run_verify_command(out)
    assert not (tmp_path / "elsewhere" / "missing.pem").exists()
