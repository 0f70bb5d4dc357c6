"""Time limits and lost workers, on real workers of a private broker.

Soft limit: Celery raises SoftTimeLimitExceeded in the handler → class ``timeout``, retried or
dead-lettered per the job type. Hard limit: Celery kills the pool process → the lease runs out
→ the reaper classifies ``timeout`` from how long the run stayed alive. A handler that kills
its own worker every time ends ``poison`` instead of looping.
"""

from __future__ import annotations

from typing import Any

import pytest

import tests.fault_types  # noqa: F401 — registers the test job types in this process
from jobs.models import ErrorClass, Job, JobRun, RunOutcome
from tests.conftest import wait_status
from tests.faults import private_stack

pytestmark = pytest.mark.integration


def test_soft_time_limit_is_a_timeout_retried_then_dead_lettered(transactional_db: None, submit: Any) -> None:
    with private_stack() as stack:
        stack.worker("soft")
        stack.beat()
        # given a job that needs 3 s but is allowed 1 s (demo.flaky retries timeouts, 3 attempts)
        body = submit("demo.flaky", {"sleep_s": 3}, constraints={"max_runtime_s": 1}).json()
        # when it runs out of time on every attempt
        job = wait_status(body["job_id"], "dead_lettered", timeout=60)
    # then each attempt was a run that failed with class timeout, and the job ends as timeout
    assert (job.error_class, job.reason) == (ErrorClass.TIMEOUT, ErrorClass.TIMEOUT)
    runs = list(JobRun.objects.filter(job_id=job.id).order_by("attempt").values_list("attempt", "outcome",
                                                                                     "error_class"))
    assert runs == [(n, RunOutcome.FAILED, ErrorClass.TIMEOUT) for n in (1, 2, 3)]
    assert "SoftTimeLimitExceeded" in job.error


def test_hard_time_limit_kill_is_reaped_as_timeout(transactional_db: None, submit: Any) -> None:
    with private_stack() as stack:
        stack.worker("hard")
        stack.beat()
        # given a handler that swallows the soft limit, allowed 1 s (hard limit 1 + 2 s grace)
        body = submit("test.ignores_soft_limit", {"sleep_s": 60}, constraints={"max_runtime_s": 1}).json()
        # when Celery's hard limit kills its pool process, twice (budget of 2 attempts)
        job = wait_status(body["job_id"], "dead_lettered", timeout=60)
    # then the reaper found both leases expired and called them timeouts, not worker losses
    assert job.error_class == ErrorClass.TIMEOUT
    runs = list(JobRun.objects.filter(job_id=job.id).order_by("attempt").values_list("outcome", "error_class"))
    assert runs == [(RunOutcome.LOST, ErrorClass.TIMEOUT)] * 2


def test_handler_that_kills_its_worker_ends_as_poison_not_a_loop(transactional_db: None, submit: Any) -> None:
    with private_stack(JOBS_LEASE_S="2", JOBS_HEARTBEAT_S="0.5", JOBS_MAX_CLAIMS_PER_STAGE="3") as stack:
        worker = stack.worker("suicide")
        stack.beat()
        # given a job whose handler SIGKILLs the pool process running it, every time
        body = submit("test.kills_own_worker").json()
        # when it is claimed, lost, reaped and retried over and over
        job = wait_status(body["job_id"], "dead_lettered", timeout=90)
        # then after three unfinished claims it is quarantined as poison
        assert (job.error_class, job.reason) == (ErrorClass.POISON, ErrorClass.POISON)
        assert JobRun.objects.filter(job_id=job.id, outcome=RunOutcome.LOST).count() == 3
        # and the worker survived it (Celery replaced the killed pool process)
        assert worker.alive()
        noop = submit("demo.noop").json()
        wait_status(noop["job_id"], "succeeded", timeout=30)
    assert Job.objects.get(pk=body["job_id"]).claims == 3
