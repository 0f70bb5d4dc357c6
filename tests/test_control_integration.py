"""Cancel, fair share, priority and pause with real Celery workers on PostgreSQL + Redis."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from audit.models import AuditStamp
from config.celery import app
from jobs.models import Job, JobRun, JobStatus
from jobs.services.submit import SubmitSpec, job_submit
from tests.conftest import wait_dispatch_ticks, wait_status
from tests.factories import admit
from tests.harness import wait_until

pytestmark = pytest.mark.integration


def _last_stamp(job_id: str, event: str) -> AuditStamp:
    stamp = AuditStamp.objects.filter(job_id=job_id, event=event).order_by("-seq").first()
    assert stamp is not None, f"no {event} stamp for {job_id}"
    return stamp


def _first_start(job_id: str) -> Any:
    return JobRun.objects.filter(job_id=job_id).order_by("started_at").values_list("started_at", flat=True).first()


def test_running_job_stops_cooperatively_when_cancelled(live: Any, submit: Any, api: Any) -> None:
    # given a long-running job that checks for cancellation between steps
    job_id = submit("demo.long_running", {"steps": 300, "step_s": 0.1}).json()["job_id"]
    wait_status(job_id, "running")
    # when it is cancelled
    response = api.post(f"/api/v1/jobs/{job_id}/cancel")
    # then the handler stops on its own, well inside the grace, and the stamp says cooperative
    assert response.status_code == 202 and response.json()["cancelling"] is True
    wait_status(job_id, "cancelled", timeout=10)
    assert _last_stamp(job_id, "cancelled").details["mode"] == "cooperative"
    assert JobRun.objects.get(job_id=job_id).outcome == "cancelled"


def test_handler_ignoring_cancel_is_terminated_after_the_grace(live: Any, submit: Any, api: Any) -> None:
    # given a job whose handler sleeps without ever looking at cancellation
    job_id = submit("demo.stubborn", {"sleep_s": 120}).json()["job_id"]
    wait_status(job_id, "running")
    # when it is cancelled
    assert api.post(f"/api/v1/jobs/{job_id}/cancel").json()["cancelling"] is True
    # then after the grace (2 s here) it is cancelled by force and its process terminated
    wait_status(job_id, "cancelled", timeout=30)
    stamp = _last_stamp(job_id, "cancelled")
    assert stamp.details["mode"] == "forced" and stamp.details["celery_task_id"]
    # and the worker pool goes on: a new job still runs, the stubborn one never finishes
    follow = submit("demo.noop", {}).json()["job_id"]
    wait_status(follow, "succeeded", timeout=30)
    assert Job.objects.get(pk=job_id).status == JobStatus.CANCELLED
    assert not AuditStamp.objects.filter(job_id=job_id, event="succeeded").exists()


def test_cancelled_queued_and_pending_jobs_never_run(live: Any, submit: Any, api: Any, principal: Any) -> None:
    # given a job due in two seconds and one waiting for approval
    soon = timezone.now() + timedelta(seconds=2)
    queued = submit("demo.noop", {}, run_after=soon.isoformat()).json()["job_id"]
    pending = submit("demo.noop", {}, constraints={"requires_human_ack": True}).json()["job_id"]
    wait_status(pending, "pending_approval")
    # when both are cancelled
    for job_id in (queued, pending):
        assert api.post(f"/api/v1/jobs/{job_id}/cancel").json() == {
            "job_id": job_id, "status": "cancelled", "cancelling": False}
    # then, after the run_after has passed and several dispatch ticks, neither ran
    wait_until(lambda: timezone.now() > soon, timeout=10, message="the run_after to pass")
    wait_dispatch_ticks(principal.user)
    for job_id in (queued, pending):
        assert Job.objects.get(pk=job_id).status == JobStatus.CANCELLED
        assert not JobRun.objects.filter(job_id=job_id).exists()


def test_retry_scheduled_job_cancelled_never_runs_again(live: Any, submit: Any, api: Any, principal: Any) -> None:
    # given a job that failed transiently and waits for its backoff
    job_id = submit("demo.flaky", {"fail_times": 3}).json()["job_id"]
    wait_status(job_id, "retry_scheduled", timeout=20)
    # when it is cancelled
    assert api.post(f"/api/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    # then, past its backoff and several dispatch ticks, it has still run only once
    backoff_ends = Job.objects.get(pk=job_id).run_after
    wait_until(lambda: timezone.now() > backoff_ends, timeout=10, message="the backoff to pass")
    wait_dispatch_ticks(principal.user)
    assert Job.objects.get(pk=job_id).status == JobStatus.CANCELLED
    assert JobRun.objects.filter(job_id=job_id).count() == 1


def test_cancelled_job_is_not_run_after_a_worker_restart(live: Any, principal: Any, api: Any) -> None:
    from tests.faults import private_stack

    with private_stack() as stack:
        # given a worker of our own on a private broker, and a queued job held back from the
        # shared workers by a far run_after, admitted by hand with a known token
        worker = stack.worker("ctl-restart", concurrency=1)
        job = job_submit(principal=principal.user, spec=SubmitSpec(
            job_type="demo.noop", inputs={}, session_id="s-restart",
            run_after=timezone.now() + timedelta(hours=1))).job
        token = admit(job)
        # when the worker stops, the job's message is left in the broker, the job is cancelled
        worker.stop()
        app.send_task("jobs.execute", args=[job.pk, "execute", token], queue="execute")
        assert api.post(f"/api/v1/jobs/{job.pk}/cancel").json()["status"] == "cancelled"
        # and a worker starts again on that broker and receives the message
        stack.worker("ctl-restart2", concurrency=1)
        refusal = wait_until(
            lambda: AuditStamp.objects.filter(job_id=job.pk, event="claim_refused").first(), timeout=30,
            message="the claim to refuse the cancelled job",
        )
        # then the claim refused it and nothing ran
        assert refusal.details["reason"] == "not_claimable:cancelled"
        assert Job.objects.get(pk=job.pk).status == JobStatus.CANCELLED
        assert not JobRun.objects.filter(job_id=job.pk).exists()


def test_flooding_session_keeps_another_waiting_at_most_one_slot(live: Any, principal: Any, api: Any) -> None:
    # given session A with 1,000 slow jobs already flowing through the workers
    user = principal.user
    flood = [
        job_submit(principal=user, spec=SubmitSpec(job_type="demo.flaky", inputs={"sleep_s": 0.2},
                                                   session_id="flood-A")).job.pk
        for _ in range(1000)
    ]
    wait_until(lambda: JobRun.objects.filter(job__session_id="flood-A").count() >= 3, timeout=30,
               message="A's jobs running")
    # when session B submits five
    b_submitted = timezone.now()
    b_jobs = [
        job_submit(principal=user, spec=SubmitSpec(job_type="demo.noop", inputs={}, session_id="guest-B")).job.pk
        for _ in range(5)
    ]
    for job_id in b_jobs:
        wait_status(job_id, "succeeded", timeout=60)
    # then B's first job started after at most A's in-flight messages (its cap, already in the
    # broker ahead of B's), not after A's backlog; and all of B finished while A's flood waits
    b_first = min(_first_start(j) for j in b_jobs)
    a_between = JobRun.objects.filter(job__session_id="flood-A", started_at__gt=b_submitted,
                                      started_at__lt=b_first).count()
    assert a_between <= settings.JOBS_SESSION_MAX_CONCURRENCY, f"{a_between} of A's jobs started before B's first"
    waiting = Job.objects.filter(pk__in=flood, status=JobStatus.QUEUED).count()
    assert waiting > 0
    # and cancelling the flood in one call ends it
    result = api.post("/api/v1/jobs/cancel", {"session_id": "flood-A"}, format="json").json()
    assert result["cancelled"] >= waiting - 10
    wait_until(lambda: not Job.objects.filter(session_id="flood-A", status__in=["queued", "running"]).exists(),
               timeout=30, message="flood cancelled")


def test_paused_session_waits_then_runs_in_priority_order(live: Any, principal: Any, api: Any) -> None:
    # given a paused session with jobs of four priorities
    assert api.post("/api/v1/sessions/s-prio/pause", {}, format="json").status_code == 200
    user = principal.user
    by_priority = {
        p: job_submit(principal=user, spec=SubmitSpec(job_type="demo.long_running",
                                                      inputs={"steps": 2, "step_s": 0.2},
                                                      session_id="s-prio", priority=p)).job.pk
        for p in (-5, 0, 50, 10)
    }
    # when several dispatch ticks pass, nothing runs
    wait_dispatch_ticks(user)
    assert set(Job.objects.filter(pk__in=by_priority.values()).values_list("status", flat=True)) == {"queued"}
    assert api.get("/api/v1/sessions/s-prio").json()["paused"] is True
    # when the session is resumed
    api.post("/api/v1/sessions/s-prio/resume")
    for job_id in by_priority.values():
        wait_status(job_id, "succeeded", timeout=60)
    # then higher priority started first and the lowest last
    starts = {p: _first_start(j) for p, j in by_priority.items()}
    assert starts[50] <= starts[0] and starts[10] <= starts[0]
    assert starts[-5] == max(starts.values())
