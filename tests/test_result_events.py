"""Result events: a job type's ``on_finish`` Celery task runs in another worker after the job
ends, and the ``job_finished`` signal reaches in-process listeners after commit (never before,
never for a rolled-back move)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.dispatch import receiver
from django.utils import timezone
from django_celery_results.models import TaskResult

from jobs.models import Job
from jobs.services.control import jobs_cancel
from jobs.services.submit import SubmitSpec, job_submit
from jobs.signals import job_finished
from tests import harness
from tests.conftest import wait_status
from tests.faults import private_stack
from tests.finish_types import DOWNSTREAM_QUEUE, DOWNSTREAM_TASK, WORKER_ENV, FlakyWithResultEvent


@pytest.mark.integration
@pytest.mark.chaos
def test_on_finish_task_runs_in_a_downstream_worker(transactional_db: None, submit: Any) -> None:
    # given the platform's worker, and a downstream worker that consumes only its own queue
    with private_stack(**WORKER_ENV) as stack:
        stack.worker("platform")
        stack.beat()
        downstream = harness.start_worker(name="downstream", queues=[DOWNSTREAM_QUEUE], concurrency=1,
                                          broker_url=stack.redis.url, env=WORKER_ENV)
        stack.procs.append(downstream)
        # when a job whose type names an on_finish task ends, once well and once badly
        ok = submit(FlakyWithResultEvent.name, {}).json()["job_id"]
        bad = submit(FlakyWithResultEvent.name, {"permanent": True}).json()["job_id"]
        wait_status(ok, "succeeded")
        wait_status(bad, "dead_lettered")

        # then the downstream worker ran the task with (job_id, status) for each
        def results() -> list[dict[str, Any]] | None:
            done = [json.loads(r.result) for r in TaskResult.objects.filter(task_name=DOWNSTREAM_TASK,
                                                                             status="SUCCESS")]
            return done if len(done) >= 2 else None

        events = harness.wait_until(results, timeout=30, message="two on_finish results")
        assert sorted((e["job_id"], e["status"]) for e in events) == sorted([(ok, "succeeded"),
                                                                             (bad, "dead_lettered")])
        assert all(e["worker"].startswith("downstream") for e in events)
        # and the platform's worker never received that task
        received = re.compile(rf"Task {re.escape(DOWNSTREAM_TASK)}\[[0-9a-f-]+\] received")
        assert len(received.findall(downstream.log())) == 2
        assert not received.search(stack.procs[0].log())


@pytest.mark.django_db(transaction=True)
def test_job_finished_reaches_listeners_after_commit_only(principal: Any) -> None:
    heard: list[dict[str, Any]] = []

    @receiver(job_finished, sender=Job, weak=False, dispatch_uid="test-listener")
    def listen(sender: Any, **kwargs: Any) -> None:
        heard.append({k: kwargs[k] for k in ("job_id", "status", "job_type")})

    @receiver(job_finished, sender=Job, weak=False, dispatch_uid="test-broken-listener")
    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("a broken listener")

    try:
        # given a queued job
        spec = SubmitSpec(job_type="demo.noop", inputs={}, session_id="s-signal",
                          run_after=timezone.now() + timedelta(hours=1))
        job = job_submit(principal=principal.user, spec=spec).job
        # when its cancel rolls back, nobody hears anything
        with pytest.raises(RuntimeError, match="abort"), transaction.atomic():
            jobs_cancel(jobs=Job.objects.filter(pk=job.pk), actor="test")
            assert heard == []  # not before commit either
            raise RuntimeError("abort")
        assert heard == []
        # when it is cancelled for real, the listener hears it once, and the broken one
        # disturbs nothing
        result = jobs_cancel(jobs=Job.objects.filter(pk=job.pk), actor="test")
        assert result.cancelled_count == 1
        assert heard == [{"job_id": job.pk, "status": "cancelled", "job_type": "demo.noop"}]
    finally:
        job_finished.disconnect(dispatch_uid="test-listener", sender=Job)
        job_finished.disconnect(dispatch_uid="test-broken-listener", sender=Job)
