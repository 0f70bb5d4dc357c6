"""Chaos: workers killed with SIGKILL mid-stage, the broker stopped mid-run.

Each test starts its own redis-server on a spare port, its own workers and beat against it, and
publishes to it from this process (``tests.faults.private_stack``), so nothing it breaks is
shared with other tests. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from typing import Any

import pytest
from django.db.models import Count, Q
from django.test import override_settings

from approvals.models import ApprovalRequest, ApprovalStatus
from audit.events import Event
from audit.models import AuditStamp
from audit.selectors import audit_verify
from examples.models import ExternalRecord
from jobs.models import TERMINAL_STATUSES, EffectRecord, Job, JobRun, JobStatus, RunOutcome
from jobs.services.submit import SubmitSpec, job_submit
from tests import harness
from tests.factories import admit
from tests.faults import private_stack

pytestmark = pytest.mark.chaos


def _kill_group(proc: harness.Proc) -> None:
    """kill -9 the worker: its main process and every pool process, with no chance to ack."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.popen.wait(timeout=10)


def _wait_all_terminal(session_id: str, count: int, timeout: float) -> dict[str, int]:
    def done() -> bool:
        return Job.objects.filter(session_id=session_id, status__in=TERMINAL_STATUSES).count() >= count

    try:
        harness.wait_until(done, timeout=timeout, interval=0.5, message=f"{count} jobs of {session_id} to finish")
    except AssertionError:
        left = Counter(Job.objects.filter(session_id=session_id).values_list("status", flat=True))
        raise AssertionError(f"not every job finished in {timeout}s: {dict(left)}") from None
    return dict(Counter(Job.objects.filter(session_id=session_id).values_list("status", flat=True)))


def _assert_each_accounted_for(session_id: str) -> None:
    """Every job succeeded with exactly one succeeded run, or is dead-lettered with a reason."""
    for job in Job.objects.filter(session_id=session_id).annotate(
        ok_runs=Count("runs", filter=Q(runs__outcome=RunOutcome.SUCCEEDED, runs__stage="execute"))
    ):
        if job.status == JobStatus.SUCCEEDED:
            assert job.ok_runs == 1, f"{job.id} has {job.ok_runs} succeeded execute runs"
        else:
            assert job.status == JobStatus.DEAD_LETTERED and job.reason and job.error_class, job


def test_kill_9_worker_mid_execute_loses_no_job(transactional_db: None, submit: Any) -> None:
    with private_stack() as stack:
        first = stack.worker("victim")
        stack.beat()
        # given 20 two-second jobs, some of them running on the first worker
        ids = [submit("demo.flaky", {"sleep_s": 2}, session_id="chaos-a").json()["job_id"] for _ in range(20)]
        harness.wait_until(lambda: Job.objects.filter(pk__in=ids, status=JobStatus.RUNNING).count() >= 2,
                           timeout=30, message="two jobs running")
        # when that worker is killed with SIGKILL and a second one takes over
        _kill_group(first)
        stack.worker("survivor")
        # then every job ends, none lost, each succeeded exactly once or dead-lettered with a reason
        statuses = _wait_all_terminal("chaos-a", 20, timeout=120)
    assert set(statuses) <= {JobStatus.SUCCEEDED, JobStatus.DEAD_LETTERED}, statuses
    _assert_each_accounted_for("chaos-a")
    # and the runs cut short were reaped as lost, not left running
    assert JobRun.objects.filter(job_id__in=ids, outcome=RunOutcome.LOST).count() >= 2
    assert not JobRun.objects.filter(job_id__in=ids, outcome=RunOutcome.RUNNING).exists()


def test_kill_9_worker_mid_commit_writes_each_effect_once(transactional_db: None, submit: Any) -> None:
    with private_stack() as stack:
        first = stack.worker("victim")
        stack.beat()
        # given six two-stage jobs whose commit takes 2 s, some of them committing
        keys = [f"chaos-b-{i}" for i in range(6)]
        for key in keys:
            submit("demo.local_store_write", {"key": key, "data": {"k": key}, "commit_sleep_s": 2},
                   session_id="chaos-b")
        harness.wait_until(
            lambda: Job.objects.filter(session_id="chaos-b", stage="finalize", status=JobStatus.RUNNING).count() >= 1,
            timeout=30, message="a commit in progress")
        # when the worker is killed with SIGKILL mid-commit and a second one takes over
        _kill_group(first)
        stack.worker("survivor")
        statuses = _wait_all_terminal("chaos-b", 6, timeout=120)
    # then every job succeeded and the store holds each effect exactly once
    assert statuses == {JobStatus.SUCCEEDED: 6}, statuses
    counts = dict(ExternalRecord.objects.filter(key__in=keys).values_list("key").annotate(n=Count("id")))
    assert counts == {key: 1 for key in keys}
    assert EffectRecord.objects.filter(job__session_id="chaos-b").count() == 6
    assert JobRun.objects.filter(job__session_id="chaos-b", stage="finalize", outcome=RunOutcome.LOST).exists()


def test_broker_restart_mid_run_completes_500_jobs_once_each(transactional_db: None, principal: Any) -> None:
    # Redis keeps nothing on disk here: messages queued when it stops are gone, and the
    # dispatcher's redispatch window (5 s) must publish them again.
    # One session holds all 500 jobs here: lift the per-session fair-share cap, in the workers
    # (env) and in this process, which dispatches on every submit.
    fast = {"JOBS_REDISPATCH_AFTER_S": "5", "JOBS_MAX_IN_FLIGHT": "60", "JOBS_SESSION_MAX_CONCURRENCY": "60"}
    with private_stack(**fast) as stack, override_settings(JOBS_SESSION_MAX_CONCURRENCY=60):
        stack.worker("steady")
        stack.beat()
        # given 500 no-op jobs submitted and running
        for i in range(500):
            job_submit(principal=principal.user, spec=SubmitSpec(job_type="demo.noop", inputs={"i": i},
                                                                 session_id="chaos-c"))
        harness.wait_until(
            lambda: Job.objects.filter(session_id="chaos-c", status=JobStatus.SUCCEEDED).count() >= 100,
            timeout=60, message="100 jobs done")
        # when Redis is stopped for a while and started again on the same port, empty
        stack.redis.stop()
        time.sleep(3)
        stack.restart_redis()
        # then all 500 complete, each with exactly one succeeded run
        statuses = _wait_all_terminal("chaos-c", 500, timeout=150)
    assert statuses == {JobStatus.SUCCEEDED: 500}, statuses
    _assert_each_accounted_for("chaos-c")


def test_same_message_published_twice_on_a_private_broker_runs_once(transactional_db: None, submit: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from jobs.admission.dispatcher import Admitted, publish

    with private_stack() as stack:
        stack.worker("dup", concurrency=2)
        # given a job admitted as the dispatcher does (held back first, so only our copies exist)
        later = (timezone.now() + timedelta(hours=1)).isoformat()
        body = submit("demo.local_store_write", {"key": "chaos-d", "data": {}}, run_after=later,
                      session_id="chaos-d").json()
        token = admit(body["job_id"], release=True)
        job = Job.objects.get(pk=body["job_id"])
        # when its execute message is published twice at once, to two idle pool processes
        message = Admitted(job.id, "execute", token, 60, job.trace_id, job.scope)
        assert publish([message, message]) == []
        # then it ran once: one execute run, one effect, the copy refused
        _wait_all_terminal("chaos-d", 1, timeout=60)
        harness.wait_until(lambda: AuditStamp.objects.filter(job_id=job.id, event="claim_refused").exists(),
                           timeout=20, message="the duplicate to be refused")
    assert Job.objects.get(pk=job.id).status == JobStatus.SUCCEEDED
    assert JobRun.objects.filter(job_id=job.id, stage="execute").count() == 1
    assert ExternalRecord.objects.filter(key="chaos-d").count() == 1


def test_worker_killed_as_job_parks_leaves_no_request_missing(transactional_db: None, submit: Any) -> None:
    """A worker dies at the moment a finished stage parks its job for approval (the fault hook in
    ``tests.fault_types`` SIGKILLs the pool process inside that transaction). The move and the
    request share the transaction, so nothing half-done survives: the job runs again and then
    waits with exactly one open request."""
    with private_stack() as stack:
        stack.worker("victim")
        stack.beat()
        # given a reviewed write whose first run dies as it parks before commit
        job_id = submit("test.dies_before_approval_opens", {"key": "orphan-1", "data": {}},
                        session_id="chaos-orphan").json()["job_id"]
        # when the reaper retries the lost run and the second run parks the job
        harness.wait_until(
            lambda: Job.objects.filter(pk=job_id, status=JobStatus.PENDING_APPROVAL).exists(),
            timeout=90, interval=0.5, message="the job to wait for approval")
    # then the first run was lost with its worker, and the waiting job has exactly one open request
    assert JobRun.objects.filter(job_id=job_id, stage="execute", outcome=RunOutcome.LOST).exists()
    assert ApprovalRequest.objects.filter(job_id=job_id, status=ApprovalStatus.PENDING).count() == 1
    assert AuditStamp.objects.filter(job_id=job_id, event=Event.APPROVAL_REQUESTED).count() == 1
    waiting = Job.objects.filter(status=JobStatus.PENDING_APPROVAL).annotate(
        open_requests=Count("approval_requests", filter=Q(approval_requests__status=ApprovalStatus.PENDING)))
    assert {j.pk: j.open_requests for j in waiting} == {j.pk: 1 for j in waiting}
    assert audit_verify(job_id=job_id).ok
