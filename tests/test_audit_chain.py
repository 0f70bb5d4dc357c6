"""The audit trail: append-only in PostgreSQL, verifiable, purged only by the retention path."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit.models import AuditStamp
from audit.selectors import audit_verify
from audit.services import RETENTION_CHAIN, stamp_append, stamps_append_bulk
from jobs.models import Job, JobRun, JobStatus
from jobs.services.retention import jobs_purge
from tests.factories import JobFactory, JobRunFactory


def days_ago(days: float) -> time_machine.travel:
    return time_machine.travel(timezone.now() - timedelta(days=days))


def make_job(user: Any, *, status: str = "queued", finished_days_ago: float | None = None) -> Job:
    """A job that went through to ``status``, stamped (``finished_days_ago``: all of it that long ago)."""
    if finished_days_ago is None:
        return JobFactory.create(principal=user, session_id="s-audit", status=status)
    with days_ago(finished_days_ago):
        return JobFactory.create(principal=user, session_id="s-audit", status=status)


@pytest.fixture
def user(make_principal: Any) -> Any:
    return make_principal("auditee").user


def _disable_trigger() -> None:
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditstamp DISABLE TRIGGER audit_stamp_append_only")


def _enable_trigger() -> None:
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditstamp ENABLE TRIGGER audit_stamp_append_only")


def test_postgresql_refuses_update_and_delete_of_stamps(user: Any) -> None:
    # given a job with stamps
    job = make_job(user, status="succeeded")
    # when a stamp is edited or deleted, by the ORM or by raw SQL
    for attempt in (
        lambda: AuditStamp.objects.filter(job_id=job.id).update(actor="mallory"),
        lambda: AuditStamp.objects.filter(job_id=job.id, seq=2).delete(),
        lambda: connection.cursor().execute("UPDATE audit_auditstamp SET details='{}' WHERE job_id=%s", [job.id]),
    ):
        # then the database refuses
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            attempt()
    assert audit_verify(job_id=job.id).ok


@pytest.mark.parametrize("tamper", ["edit_details", "edit_status", "delete_middle", "delete_tail", "reorder"])
def test_verify_finds_the_first_broken_link_when_the_trigger_is_bypassed(user: Any, tamper: str) -> None:
    # given a verified trail
    good = make_job(user, status="succeeded")
    job = make_job(user, status="dead_lettered")
    assert audit_verify().ok
    # when someone with DDL rights disables the trigger and tampers with one stamp
    _disable_trigger()
    try:
        stamps = AuditStamp.objects.filter(job_id=job.id)
        if tamper == "edit_details":
            stamps.filter(seq=2).update(details={"worker": "forged"})
        elif tamper == "edit_status":
            stamps.filter(seq=3).update(to_status="succeeded")
        elif tamper == "delete_middle":
            stamps.filter(seq=2).delete()
        elif tamper == "delete_tail":
            stamps.filter(seq=3).delete()
        else:
            stamps.filter(seq=3).update(seq=9)
    finally:
        _enable_trigger()
    # then verification fails, naming the job and the first broken seq; the untouched chain is fine
    report = audit_verify()
    assert not report.ok
    first = report.broken[0]
    assert first.job_id == job.id
    assert (first.seq, first.problem) == {
        "edit_details": (2, "hash"), "edit_status": (3, "hash"), "delete_middle": (3, "seq_gap"),
        "delete_tail": (2, "tail_status"), "reorder": (9, "seq_gap"),
    }[tamper]
    assert audit_verify(job_id=good.id).ok
    # and the command exits non-zero with the link, expected and stored values
    with pytest.raises(CommandError) as info:
        call_command("verify_audit")
    assert info.value.returncode == 1
    assert job.id in str(info.value)


def test_verify_passes_on_a_large_database_and_streams(user: Any, capsys: Any) -> None:
    # given 3000 jobs with 3 stamps each (bulk-written, as a bulk cancel would)
    jobs = JobFactory.create_bulk(3000, principal=user, session_id="bulk", status=JobStatus.SUCCEEDED)
    for event, frm, to in (("submitted", "", "queued"), ("claimed", "queued", "running"),
                           ("succeeded", "running", "succeeded")):
        stamps_append_bulk([{"job_id": j.id, "event": event, "from_status": frm, "to_status": to,
                             "details": {"policy": {"path": ["default:risk=low:allow"]}, "retry_count": 0}}
                            for j in jobs])
    # when the whole database is verified in small chunks
    report = audit_verify(chunk_size=500)
    # then every chain verifies
    assert report.ok, report.broken[:3]
    assert (report.chains, report.stamps, report.jobs_checked) == (3000, 9000, 3000)
    call_command("verify_audit", "--chunk-size", "700")
    assert "audit OK" in capsys.readouterr().out


def test_retention_purges_old_terminal_jobs_and_leaves_its_own_stamp(user: Any, capsys: Any) -> None:
    # given old terminal jobs, a recent terminal job, an old job still queued, and an old refusal chain
    old = [make_job(user, status="succeeded", finished_days_ago=40) for _ in range(3)]
    recent = make_job(user, status="succeeded", finished_days_ago=1)
    waiting = make_job(user)
    with days_ago(45):
        stamp_append(job_id="job_forged_msg", event="claim_refused", details={"reason": "unknown_job"})
    JobRunFactory.create(job=old[0])
    heads = {j.id: AuditStamp.objects.filter(job_id=j.id).order_by("-seq").values_list("seq", "hash").first()
             for j in old}
    # when a dry run is made
    call_command("cleanup", "--older-than-days", "30", "--dry-run")
    out = capsys.readouterr().out
    # then it only counts
    assert "would delete: 3 job(s), 4 chain(s), 10 stamp(s)" in out
    assert Job.objects.count() == 5
    # when the purge runs for real, in batches of two
    report = jobs_purge(before=timezone.now() - timedelta(days=30), dry_run=False, batch_size=2)
    # then the old jobs, their runs and stamps and the old refusal chain are gone; the rest stays
    assert (report.jobs, report.chains, report.stamps, report.batches) == (3, 4, 10, 2)
    assert set(Job.objects.values_list("pk", flat=True)) == {recent.id, waiting.id}
    assert not AuditStamp.objects.filter(job_id__in=[j.id for j in old] + ["job_forged_msg"]).exists()
    assert not JobRun.objects.exists()
    # and the retention chain records what was purged, with each chain's last hash
    purges = list(AuditStamp.objects.filter(job_id=RETENTION_CHAIN).order_by("seq"))
    assert [s.event for s in purges] == ["retention_purge", "retention_purge"]
    recorded = {c["job_id"]: (c["last_seq"], c["last_hash"]) for s in purges for c in s.details["chains"]}
    assert {k: recorded[k] for k in heads} == heads
    assert recorded["job_forged_msg"][0] == 1
    # and everything left still verifies
    assert audit_verify().ok


def test_retention_flag_does_not_allow_updates(user: Any) -> None:
    # given the retention flag set in a transaction
    job = make_job(user, status="succeeded")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL audit.retention = 'on'")
        # when an UPDATE is attempted under it, then it is still refused
        AuditStamp.objects.filter(job_id=job.id).update(actor="retention")
