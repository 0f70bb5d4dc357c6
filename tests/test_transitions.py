"""The one transition function: guarded compare-and-set with its stamp in the same transaction."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from audit.models import AuditStamp
from jobs.models import Job, JobRun, JobStatus
from jobs.services.submit import SubmitSpec, job_submit
from jobs.transitions import IllegalTransition, job_transition
from jobs.worker.runner import stage_run
from tests.factories import JobFactory, admit
from tests.harness import race


def _queued_job(principal: Any, job_type: str = "demo.noop") -> Job:
    """A queued job held back by a far run_after: a live dispatcher (workers this session may be
    running) never admits it, so only the test moves it."""
    return JobFactory.create(principal=principal.user, job_type=job_type, session_id="s",
                             run_after=timezone.now() + timedelta(hours=1))


@pytest.mark.django_db(transaction=True)
def test_two_workers_racing_for_one_transition_only_one_wins(principal: Any) -> None:
    # given a queued job
    job = _queued_job(principal)
    # when two "workers" try queued -> running at the same moment, several times over
    results = race(
        2,
        lambda i: job_transition(job_id=job.id, to=JobStatus.RUNNING, allowed_from=[JobStatus.QUEUED],
                                 event="claimed", actor=f"worker:{i}"),
    )
    # then exactly one moved it, the other was a no-op, and there is exactly one stamp for it
    assert sorted(r is None for r in results) == [False, True], results
    assert Job.objects.get(pk=job.id).status == JobStatus.RUNNING
    assert AuditStamp.objects.filter(job_id=job.id, event="claimed").count() == 1


@pytest.mark.django_db(transaction=True)
def test_racing_claims_of_the_same_message_run_the_handler_once(principal: Any) -> None:
    # given a queued two-stage job, held back from the dispatcher by a far run_after, then
    # admitted by hand (so no worker that may be running in this session sees a message for it)
    job = job_submit(
        principal=principal.user,
        spec=SubmitSpec(job_type="demo.local_store_write", inputs={"key": "race", "data": {}}, session_id="s",
                        run_after=timezone.now() + timedelta(hours=1)),
    ).job
    token = admit(job)
    # when two deliveries of its execute message are handled at once
    results = race(2, lambda i: stage_run(job_id=job.id, stage="execute", token=token, worker=f"w{i}"))
    # then one ran the stage and the other was refused and stamped
    outcomes = sorted(r.outcome for r in results)
    assert outcomes == ["advanced", "refused"], results
    assert JobRun.objects.filter(job_id=job.id).count() == 1
    assert AuditStamp.objects.filter(job_id=job.id, event="claim_refused").count() == 1


@pytest.mark.django_db
def test_illegal_transition_is_refused_before_touching_the_row(principal: Any) -> None:
    job = _queued_job(principal)
    with pytest.raises(IllegalTransition):
        job_transition(job_id=job.id, to=JobStatus.SUCCEEDED, allowed_from=[JobStatus.QUEUED], event="x")
    assert Job.objects.get(pk=job.id).status == JobStatus.QUEUED


@pytest.mark.django_db
def test_transition_from_a_status_not_allowed_is_a_noop(principal: Any) -> None:
    job = _queued_job(principal)
    assert job_transition(job_id=job.id, to=JobStatus.SUCCEEDED, allowed_from=[JobStatus.RUNNING],
                          event="succeeded") is None
    assert Job.objects.get(pk=job.id).status == JobStatus.QUEUED
    assert not AuditStamp.objects.filter(job_id=job.id, event="succeeded").exists()
