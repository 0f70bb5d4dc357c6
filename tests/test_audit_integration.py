"""verify_audit on a database that real workers are writing to."""

from __future__ import annotations

import time
from typing import Any

import pytest

from audit.selectors import audit_verify
from jobs.models import Job
from tests.conftest import wait_status

pytestmark = pytest.mark.integration


def test_verify_passes_while_workers_append_stamps(live: Any, submit: Any) -> None:
    # given many jobs in flight on real workers (store writes have two stages: more stamps)
    ids = [submit("demo.noop", {"i": i}, session_id="busy").json()["job_id"] for i in range(30)]
    ids += [submit("demo.local_store_write", {"key": f"busy-{i}", "data": {}}, session_id="busy").json()["job_id"]
            for i in range(15)]
    # when the trail is verified repeatedly while they run
    runs = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        report = audit_verify(chunk_size=50)
        runs += 1
        # then every pass verifies, however far the chains have grown
        assert report.ok, report.broken[:3]
        if not Job.objects.filter(session_id="busy").exclude(status="succeeded").exists():
            break
    for job_id in ids:
        wait_status(job_id, "succeeded", timeout=30)
    final = audit_verify()
    assert final.ok and final.jobs_checked == len(ids)
    assert final.stamps >= 30 * 3 + 15 * 5
    assert runs >= 1
