"""``manage.py replay_jobs`` with real workers."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from audit.models import AuditStamp
from jobs.models import Job, JobRun
from tests.conftest import wait_status
from tests.harness import wait_until

pytestmark = pytest.mark.integration


def test_replay_jobs_dry_run_then_by_reason_and_type(live: Any, submit: Any) -> None:
    # given two dead-lettered jobs
    ids = [submit("demo.flaky", {"permanent": True}).json()["job_id"] for _ in range(2)]
    for job_id in ids:
        wait_status(job_id, "dead_lettered")
    # when a dry run lists them
    out = StringIO()
    call_command("replay_jobs", "--reason", "permanent", "--job-type", "demo.flaky", "--dry-run", stdout=out)
    # then nothing changed
    assert "would replay 2 job(s)" in out.getvalue()
    assert set(Job.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"dead_lettered"}
    # when one is replayed by id
    out = StringIO()
    call_command("replay_jobs", "--job", ids[0], "--job", "job_unknown", "--actor", "alice", stdout=out)
    # then it ran again, stamped with the shell operator, and the unknown id is reported
    assert f"replayed {ids[0]}" in out.getvalue() and "skipped job_unknown" in out.getvalue()
    wait_until(lambda: JobRun.objects.filter(job_id=ids[0]).count() == 2, timeout=30, message="second run")
    assert AuditStamp.objects.get(job_id=ids[0], event="replayed").actor == "cli:alice"
    assert Job.objects.get(pk=ids[1]).status == "dead_lettered"
