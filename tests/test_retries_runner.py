"""Retries wait in the database: the runner's failure paths and the reaper, driven directly.

No broker is involved: ``stage_run`` is called as the Celery task would call it, and the
dispatcher's publish never fires (these tests run inside a transaction that never commits).
Time stands still in this module and moves only when a test moves it (backoffs passing, a lease
running out), so every timestamp is the one the code under test wrote.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

import tests.fault_types  # noqa: F401 — registers the test job types
from audit.models import AuditStamp
from examples.models import ExternalRecord
from jobs.admission.dispatcher import promote_due_retries
from jobs.models import ErrorClass, Job, JobRun, JobStatus, RunOutcome
from jobs.services.submit import SubmitSpec, job_submit
from jobs.worker.context import renew_lease
from jobs.worker.reaper import reap_expired_leases
from jobs.worker.runner import stage_run
from tests.factories import JobFactory, admit, claim

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clock")]


def _submit(principal: Any, job_type: str, inputs: dict[str, Any] | None = None) -> Job:
    return job_submit(principal=principal.user,
                      spec=SubmitSpec(job_type=job_type, inputs=inputs or {}, session_id="s-retry")).job


def _run(job_id: str, worker: str = "w1") -> Any:
    """Admit the job as the dispatcher does and run its current stage as a worker would."""
    token = admit(job_id)
    job = Job.objects.get(pk=job_id)
    return stage_run(job_id=job_id, stage=job.stage, token=token, worker=worker)


def _promote(clock: time_machine.Traveller, job_id: str) -> None:
    """Let the backoff pass and run the dispatch tick's promotion."""
    clock.move_to(Job.objects.get(pk=job_id).run_after)
    assert promote_due_retries() >= 1


def test_transient_failure_schedules_a_retry_with_backoff_then_succeeds(
    clock: time_machine.Traveller, principal: Any
) -> None:
    # given a flaky job that fails transiently once (backoff base 0.2 s, 25 % jitter)
    job = _submit(principal, "demo.flaky", {"fail_times": 1})
    # when its first attempt runs
    before = timezone.now()
    outcome = _run(job.id)
    # then it waits in retry_scheduled with run_after set by the backoff, class on job/run/stamp
    job.refresh_from_db()
    assert outcome.outcome == "retry"
    assert job.status == JobStatus.RETRY_SCHEDULED
    assert job.error_class == ErrorClass.TRANSIENT
    assert before + timedelta(seconds=0.15) <= job.run_after <= timezone.now() + timedelta(seconds=0.25)
    run = JobRun.objects.get(job_id=job.id)
    assert (run.outcome, run.error_class, run.attempt) == (RunOutcome.FAILED, ErrorClass.TRANSIENT, 1)
    stamp = AuditStamp.objects.filter(job_id=job.id, event="retry_scheduled").get()
    assert stamp.details["error_class"] == ErrorClass.TRANSIENT and stamp.details["retry_count"] == 1
    # when the backoff passes and the dispatch tick promotes it, and it runs again
    _promote(clock, job.id)
    assert Job.objects.get(pk=job.id).status == JobStatus.QUEUED
    outcome = _run(job.id)
    # then it succeeds on attempt 2, each attempt its own JobRun
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.result == {"attempt": 2}
    assert list(JobRun.objects.filter(job_id=job.id).order_by("attempt").values_list("attempt", "outcome")) == [
        (1, RunOutcome.FAILED), (2, RunOutcome.SUCCEEDED)]


def test_exhausted_retries_dead_letter_the_job(clock: time_machine.Traveller, principal: Any) -> None:
    # given a job that always fails transiently and a budget of 3 attempts
    job = _submit(principal, "demo.flaky", {"fail_times": 10})
    # when all three attempts run
    for attempt in range(1, 4):
        outcome = _run(job.id)
        if attempt < 3:
            assert outcome.outcome == "retry"
            _promote(clock, job.id)
    # then it is dead-lettered as retries_exhausted after exactly three runs
    job.refresh_from_db()
    assert (job.status, job.error_class, job.reason) == (
        JobStatus.DEAD_LETTERED, ErrorClass.RETRIES_EXHAUSTED, ErrorClass.RETRIES_EXHAUSTED)
    assert JobRun.objects.filter(job_id=job.id).count() == 3
    stamp = AuditStamp.objects.filter(job_id=job.id, event="dead_lettered").get()
    assert stamp.details["error_class"] == ErrorClass.RETRIES_EXHAUSTED


def test_permanent_error_dead_letters_at_once(principal: Any) -> None:
    # given a job that fails permanently
    job = _submit(principal, "demo.flaky", {"permanent": True})
    # when it runs once
    outcome = _run(job.id)
    # then it is dead-lettered with class "permanent" and no retry was scheduled
    job.refresh_from_db()
    assert outcome.outcome == "dead_lettered"
    assert (job.status, job.error_class, job.reason) == (
        JobStatus.DEAD_LETTERED, ErrorClass.PERMANENT, ErrorClass.PERMANENT)
    assert not AuditStamp.objects.filter(job_id=job.id, event="retry_scheduled").exists()


def test_retry_resumes_the_failed_stage_not_earlier_ones(clock: time_machine.Traveller, principal: Any) -> None:
    # given a two-stage job whose commit fails transiently once
    job = _submit(principal, "demo.local_store_write", {"key": "k-res", "data": {"a": 1}, "fail_commit_times": 1})
    # when execute runs, finalize fails, the retry is promoted and finalize runs again
    assert _run(job.id).outcome == "advanced"
    assert _run(job.id).outcome == "retry"
    _promote(clock, job.id)
    assert Job.objects.get(pk=job.id).stage == "finalize"
    assert _run(job.id).outcome == "succeeded"
    # then execute ran once, finalize twice, and the effect exists once
    runs = list(JobRun.objects.filter(job_id=job.id).order_by("started_at").values_list("stage", "attempt"))
    assert runs == [("execute", 1), ("finalize", 1), ("finalize", 2)]
    assert ExternalRecord.objects.filter(key="k-res").count() == 1


def test_handled_failures_do_not_count_as_unfinished_claims(clock: time_machine.Traveller, principal: Any) -> None:
    # given a flaky job with a large attempt budget and a low poison threshold
    job = JobFactory.create(principal=principal.user, job_type="demo.flaky", inputs={"fail_times": 3},
                            max_attempts=10)
    with override_settings(JOBS_MAX_CLAIMS_PER_STAGE=2):
        # when it fails three times (each failure handled) and then runs
        for _ in range(3):
            assert _run(job.id).outcome == "retry"
            _promote(clock, job.id)
        outcome = _run(job.id)
    # then it was never taken for poison: it succeeded on attempt 4
    assert outcome.outcome == "succeeded", outcome


# --- the reaper -----------------------------------------------------------------------------


def _running(clock: time_machine.Traveller, principal: Any, job_type: str, inputs: dict[str, Any] | None = None,
             *, alive_s: float, **fields: Any) -> Job:
    """A job claimed by a worker that then vanished: its last heartbeat came ``alive_s`` seconds
    after the run started, and its lease has run out since. ``fields`` are the envelope's
    (``stage``, ``max_runtime_s``, ``attempts`` before this claim, ...)."""
    if fields.get("stage") == "finalize":
        fields.setdefault("proposal", {"key": "k", "data": {}})
    job = JobFactory.create(principal=principal.user, job_type=job_type, inputs=inputs or {}, **fields)
    run = claim(job, worker="dead-worker")
    clock.shift(alive_s)
    assert renew_lease(job.id, run.run_id)
    clock.shift(settings.JOBS_LEASE_S + 1)
    return job


def test_reaper_retries_a_lost_execute_with_the_attempt_counted(clock: time_machine.Traveller, principal: Any) -> None:
    # given a running execute stage whose worker died 1 s into a 30 s budget
    job = _running(clock, principal, "demo.flaky", alive_s=1)
    # when the reaper runs
    counts = reap_expired_leases()
    # then the job waits for a retry (worker_lost), its run is marked lost, the attempt counted
    job.refresh_from_db()
    assert counts["requeued"] == 1
    assert (job.status, job.error_class, job.attempts) == (JobStatus.RETRY_SCHEDULED, ErrorClass.WORKER_LOST, 1)
    assert job.run_after > timezone.now() - timedelta(seconds=1)
    run = JobRun.objects.get(job_id=job.id)
    assert (run.outcome, run.error_class) == (RunOutcome.LOST, ErrorClass.WORKER_LOST)
    stamp = AuditStamp.objects.filter(job_id=job.id, event="lease_expired").get()
    assert stamp.details["cause"] == ErrorClass.WORKER_LOST and stamp.to_status == JobStatus.RETRY_SCHEDULED


def test_reaper_calls_a_run_alive_past_its_soft_limit_a_timeout(clock: time_machine.Traveller, principal: Any) -> None:
    # given a run that kept heartbeating past its 1 s soft limit (then the hard limit killed it)
    job = _running(clock, principal, "demo.flaky", alive_s=2.5, max_runtime_s=1)
    # when the reaper runs
    reap_expired_leases()
    # then the cause is timeout, retried because demo.flaky retries timeouts
    job.refresh_from_db()
    assert (job.status, job.error_class) == (JobStatus.RETRY_SCHEDULED, ErrorClass.TIMEOUT)


def test_reaper_dead_letters_a_timeout_when_the_type_does_not_retry_them(
    clock: time_machine.Traveller, principal: Any
) -> None:
    # given a type whose RetryPolicy has retry_timeouts=False, killed by its hard limit
    job = _running(clock, principal, "test.no_timeout_retry", alive_s=5, max_runtime_s=2)
    # when the reaper runs
    reap_expired_leases()
    # then it is dead-lettered as timeout on the first attempt
    job.refresh_from_db()
    assert (job.status, job.error_class, job.reason) == (JobStatus.DEAD_LETTERED, ErrorClass.TIMEOUT, "timeout")


def test_reaper_dead_letters_when_the_budget_is_spent(clock: time_machine.Traveller, principal: Any) -> None:
    # given a lost run that was the last attempt of the budget
    job = _running(clock, principal, "demo.flaky", alive_s=1, attempts=2, max_attempts=3)
    # when the reaper runs
    reap_expired_leases()
    # then it is dead-lettered as retries_exhausted
    job.refresh_from_db()
    assert (job.status, job.error_class) == (JobStatus.DEAD_LETTERED, ErrorClass.RETRIES_EXHAUSTED)


def test_reaper_dead_letters_poison_after_too_many_unfinished_claims(
    clock: time_machine.Traveller, principal: Any
) -> None:
    # given a job whose stage was claimed JOBS_MAX_CLAIMS_PER_STAGE times without finishing
    with override_settings(JOBS_MAX_CLAIMS_PER_STAGE=3):
        job = _running(clock, principal, "test.kills_own_worker", alive_s=0.1, claims=2, attempts=2)
        # when the reaper runs
        reap_expired_leases()
    # then it is poison, not retried again although its attempt budget (50) is not spent
    job.refresh_from_db()
    assert (job.status, job.error_class, job.reason) == (JobStatus.DEAD_LETTERED, ErrorClass.POISON, "poison")


def test_claim_refuses_a_redelivered_stage_past_the_claim_limit(principal: Any) -> None:
    # given a queued job whose stage has already been claimed the maximum number of times
    job = JobFactory.create(principal=principal.user, job_type="demo.flaky", claims=2)
    with override_settings(JOBS_MAX_CLAIMS_PER_STAGE=2):
        # when its message is delivered once more
        outcome = _run(job.id)
    # then the handler never runs and the job is dead-lettered as poison
    job.refresh_from_db()
    assert outcome.outcome == "dead_lettered"
    assert (job.status, job.error_class) == (JobStatus.DEAD_LETTERED, ErrorClass.POISON)
    assert not JobRun.objects.filter(job_id=job.id).exists()


def test_reaper_dead_letters_a_lost_commit_that_is_not_idempotent(
    clock: time_machine.Traveller, principal: Any
) -> None:
    # given a type whose commit bypasses the effect ledger, lost during finalize
    from examples.job_types import LocalStoreWrite
    from jobs.registry import registry

    job = _running(clock, principal, "demo.local_store_write", {"key": "k", "data": {}}, stage="finalize", alive_s=1)
    instance = registry.get("demo.local_store_write")
    instance.idempotent_commit = False  # type: ignore[misc]
    try:
        # when the reaper runs
        reap_expired_leases()
    finally:
        del instance.idempotent_commit  # type: ignore[misc]
    # then a human must check: dead-lettered as worker_lost, not retried
    job.refresh_from_db()
    assert (job.status, job.error_class) == (JobStatus.DEAD_LETTERED, ErrorClass.WORKER_LOST)
    assert LocalStoreWrite.idempotent_commit is True


def test_reaper_retries_a_lost_commit_that_goes_through_the_ledger(
    clock: time_machine.Traveller, principal: Any
) -> None:
    # given the same lost finalize on a type whose commit goes through the effect ledger
    job = _running(clock, principal, "demo.local_store_write", {"key": "k", "data": {}}, stage="finalize", alive_s=1)
    # when the reaper runs
    reap_expired_leases()
    # then it is retried: the ledger makes a second commit return the first one's result
    job.refresh_from_db()
    assert (job.status, job.error_class) == (JobStatus.RETRY_SCHEDULED, ErrorClass.WORKER_LOST)


def test_reaper_leaves_a_renewed_lease_alone(clock: time_machine.Traveller, principal: Any) -> None:
    # given a running job whose heartbeat renewed the lease
    job = _running(clock, principal, "demo.flaky", alive_s=1)
    assert renew_lease(job.id, Job.objects.get(pk=job.id).current_run_id)
    # when the reaper runs
    counts = reap_expired_leases()
    # then nothing happens to it
    assert counts == {"requeued": 0, "dead_lettered": 0}
    assert Job.objects.get(pk=job.id).status == JobStatus.RUNNING
