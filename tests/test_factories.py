"""The factories build what the platform would have built: the tests that use them rely on it."""

from __future__ import annotations

from typing import Any

import pytest

from approvals.models import ApprovalRequest, ApprovalStatus
from audit.models import AuditStamp
from audit.selectors import audit_verify
from jobs.models import Job, JobRun, JobStatus, RunOutcome
from jobs.transitions import IllegalTransition
from jobs.worker.runner import job_claim
from tests.factories import JobFactory, admit, advance, claim

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("status", list(JobStatus))
def test_a_job_in_any_status_has_a_chain_that_verifies(principal: Any, status: str) -> None:
    # when a job is made in that status
    job = JobFactory.create(principal=principal.user, status=status)
    # then it is there with the job type's envelope and a legal, verifiable trail ending in it
    assert job.status == status and (job.scope, job.permissions) == ("demo", ["demo:run"])
    last = AuditStamp.objects.filter(job_id=job.id).exclude(to_status="").order_by("-seq").first()
    assert last is not None and last.to_status == status
    assert audit_verify(job_id=job.id).ok
    # and a job waiting for a human has exactly one open request
    open_requests = ApprovalRequest.objects.filter(job=job, status=ApprovalStatus.PENDING).count()
    assert open_requests == (1 if status == JobStatus.PENDING_APPROVAL else 0)


def test_admit_gives_the_token_the_claim_accepts_and_only_the_latest(principal: Any) -> None:
    # given a job admitted twice (a redispatch)
    job = JobFactory.create(principal=principal.user)
    stale = admit(job)
    token = admit(job)
    # then the tokens differ, the stale one is refused and the latest claims the job
    assert stale != token and job.dispatch_token == token and job.dispatched_at is not None
    refused = job_claim(job_id=job.id, stage=job.stage, token=stale, worker="w")
    assert getattr(refused, "outcome", None) == "refused"
    assert isinstance(job_claim(job_id=job.id, stage=job.stage, token=token, worker="w"), tuple)


def test_admit_refuses_a_job_that_is_not_queued(principal: Any) -> None:
    job = JobFactory.create(principal=principal.user, status=JobStatus.SUCCEEDED)
    with pytest.raises(AssertionError, match="not queued"):
        admit(job)


def test_claim_leaves_a_running_job_with_its_run_and_lease(principal: Any) -> None:
    job = JobFactory.create(principal=principal.user, admitted=True)
    run = claim(job)
    assert (job.status, job.current_run_id, job.attempts) == (JobStatus.RUNNING, run.run_id, 1)
    assert job.lease_expires_at is not None and job.heartbeat_at is not None
    assert job.lease_expires_at > job.heartbeat_at
    assert JobRun.objects.get(job=job).outcome == RunOutcome.RUNNING


def test_create_bulk_writes_rows_only(principal: Any) -> None:
    jobs = JobFactory.create_bulk(5, principal=principal.user, session_id="bulk")
    assert Job.objects.filter(session_id="bulk").count() == 5 == len({j.id for j in jobs})
    assert not AuditStamp.objects.filter(job_id__in=[j.id for j in jobs]).exists()


def test_advance_moves_a_job_as_the_platform_does(principal: Any) -> None:
    # given a queued job
    job = JobFactory.create(principal=principal.user)
    # when it is claimed, retried, claimed again and finishes
    advance(job, JobStatus.RUNNING, JobStatus.RETRY_SCHEDULED, JobStatus.QUEUED, JobStatus.RUNNING,
            JobStatus.SUCCEEDED)
    # then each claim opened a run of its own, the second with a fresh id, and the trail verifies
    runs = list(JobRun.objects.filter(job=job).order_by("attempt").values_list("run_id", flat=True))
    assert job.status == JobStatus.SUCCEEDED and runs[0] == job.first_run_id and len(set(runs)) == 2
    assert audit_verify(job_id=job.id).ok
    # and an illegal step is refused
    with pytest.raises(IllegalTransition):
        advance(job, JobStatus.QUEUED)
