"""A job flows from REST through real Celery workers on PostgreSQL + Redis to a result."""

from __future__ import annotations

from typing import Any

import pytest

from audit.models import AuditStamp
from config.celery import app
from examples.models import ExternalRecord
from jobs.models import Job, JobRun
from tests.conftest import wait_status
from tests.factories import admit
from tests.harness import wait_until

pytestmark = pytest.mark.integration


def test_noop_job_reaches_succeeded_with_full_trail(live: Any, submit: Any, api: Any) -> None:
    # given a submitted no-op job
    body = submit("demo.noop", {"hello": "world"}).json()
    assert body["status"] == "queued"
    assert body["job_id"].startswith("job_") and body["run_id"].startswith("run_")
    assert body["status_url"].endswith(f"/api/v1/jobs/{body['job_id']}")
    # when the workers run it
    wait_status(body["job_id"], "succeeded")
    # then the API shows the result and the trail lists every transition in order
    detail = api.get(f"/api/v1/jobs/{body['job_id']}").json()
    assert detail["status"] == "succeeded"
    assert detail["result"] == {"ok": True}
    assert detail["runs"][0]["run_id"] == body["run_id"]
    stamps = api.get(f"/api/v1/jobs/{body['job_id']}/audit").json()["stamps"]
    assert [(s["event"], s["from_status"], s["to_status"]) for s in stamps] == [
        ("submitted", "", "queued"),
        ("claimed", "queued", "running"),
        ("succeeded", "running", "succeeded"),
    ]
    assert [s["seq"] for s in stamps] == [1, 2, 3]
    assert stamps[1]["prev_hash"] == stamps[0]["hash"]


def test_two_stage_job_resumes_at_finalize_without_redoing_execute(live: Any, submit: Any) -> None:
    # given a two-stage job whose commit fails transiently once
    body = submit("demo.local_store_write", {"key": "k-resume", "data": {"a": 1}, "fail_commit_times": 1}).json()
    # when it runs, fails in finalize, waits in retry_scheduled and is picked up again
    job = wait_status(body["job_id"], "succeeded", timeout=45)
    # then execute ran once, finalize twice, and the effect exists once
    runs = list(JobRun.objects.filter(job_id=job.id).order_by("started_at").values_list("stage", "outcome"))
    assert runs == [("execute", "succeeded"), ("finalize", "failed"), ("finalize", "succeeded")]
    assert ExternalRecord.objects.filter(key="k-resume").count() == 1
    events = list(AuditStamp.objects.filter(job_id=job.id).order_by("seq").values_list("event", flat=True))
    assert "retry_scheduled" in events and "retry_due" in events


def test_same_message_published_twice_executes_once(live: Any, submit: Any) -> None:
    # given a succeeded two-stage job and the exact message that ran its execute stage
    body = submit("demo.local_store_write", {"key": "k-dup", "data": {}}).json()
    job = wait_status(body["job_id"], "succeeded")
    stale_token = "replayed-token"
    # when the stage messages are published again, twice, with stale and forged tokens
    for _ in range(2):
        app.send_task("jobs.execute", args=[job.id, "execute", stale_token], queue="execute")
        app.send_task("jobs.finalize", args=[job.id, "finalize", stale_token], queue="finalize")
    # then every one is refused and stamped, and nothing ran again
    wait_until(
        lambda: AuditStamp.objects.filter(job_id=job.id, event="claim_refused").count() >= 4,
        timeout=20, message="four refusals",
    )
    assert JobRun.objects.filter(job_id=job.id).count() == 2
    assert ExternalRecord.objects.filter(key="k-dup").count() == 1
    assert Job.objects.get(pk=job.id).status == "succeeded"


def test_duplicate_publish_of_a_queued_job_runs_it_once(live: Any, submit: Any) -> None:
    # given a job held back by a far run_after
    from datetime import timedelta

    from django.utils import timezone

    from jobs.admission.dispatcher import Admitted, publish

    run_after = (timezone.now() + timedelta(hours=1)).isoformat()
    body = submit("demo.local_store_write", {"key": "k-twice", "data": {}}, run_after=run_after).json()
    # when it is admitted (as the dispatcher does) and its message is published twice
    token = admit(body["job_id"], release=True)
    job = Job.objects.get(pk=body["job_id"])
    message = Admitted(job.id, "execute", token, 60, job.trace_id, job.scope)
    assert publish([message, message]) == []
    # then it succeeds, with exactly one execute run and one effect, and the copy is refused
    wait_status(job.id, "succeeded")
    wait_until(lambda: AuditStamp.objects.filter(job_id=job.id, event="claim_refused").exists(), timeout=20,
               message="refusal of the duplicate")
    assert JobRun.objects.filter(job_id=job.id, stage="execute").count() == 1
    assert ExternalRecord.objects.filter(key="k-twice").count() == 1


def test_unknown_job_id_message_is_refused_and_stamped(live: Any) -> None:
    # when a message for a job that does not exist is sent straight to the queue
    app.send_task("jobs.execute", args=["job_doesnotexist", "execute", "x"], queue="execute")
    # then it is refused and stamped under that id
    stamp = wait_until(lambda: AuditStamp.objects.filter(job_id="job_doesnotexist").first(), timeout=20,
                       message="refusal stamp")
    assert stamp.event == "claim_refused"
    assert stamp.details["reason"] == "unknown_job"
