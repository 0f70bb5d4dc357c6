"""A job waiting for approval always has its open request.

The move to ``pending_approval`` and the request share one transaction (the chaos test kills a
worker at exactly that point, tests/test_chaos.py). An orphan left by an older version — a job
waiting with no request — is repaired by the housekeeping tick, and the repair is stamped.
"""

from __future__ import annotations

from typing import Any

from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.services import approvals_repair
from audit.events import Event
from audit.models import AuditStamp
from audit.selectors import audit_verify
from governance.models import PolicyRule
from jobs.models import Job, JobStatus
from jobs.services.submit import SubmitSpec, job_submit


def _parked_job(principal: Any) -> Job:
    PolicyRule.objects.create(order=1, name="review noops", job_type="demo.noop", decision="require_approval",
                              reason="review first", checkpoint="before_execute", approvers=1)
    result = job_submit(principal=principal.user, spec=SubmitSpec(job_type="demo.noop", inputs={}, session_id="s"))
    return result.job


def test_submit_parks_the_job_and_opens_its_request_together(principal: Any) -> None:
    # given a rule that wants a human before noops run; when one is submitted
    job = _parked_job(principal)
    # then it waits with exactly one open request, stamped once
    assert job.status == JobStatus.PENDING_APPROVAL
    assert ApprovalRequest.objects.filter(job=job, status=ApprovalStatus.PENDING).count() == 1
    assert AuditStamp.objects.filter(job_id=job.pk, event=Event.APPROVAL_REQUESTED).count() == 1


def test_housekeeping_repairs_a_waiting_job_without_request(principal: Any) -> None:
    # given a waiting job whose request is missing (as an older version could leave it)
    job = _parked_job(principal)
    ApprovalRequest.objects.filter(job=job).delete()
    # when the housekeeping tick runs, twice
    first, second = approvals_repair(), approvals_repair()
    # then the request is open again, once, and the repair is on the job's trail
    assert (first, second) == (1, 0)
    request = ApprovalRequest.objects.get(job=job, status=ApprovalStatus.PENDING)
    assert request.checkpoint == "before_execute"
    repaired = AuditStamp.objects.get(job_id=job.pk, event=Event.APPROVAL_REQUEST_REPAIRED)
    assert repaired.details["approval_id"] == request.public_id
    assert audit_verify(job_id=job.pk).ok


def test_repair_leaves_healthy_and_finished_jobs_alone(principal: Any) -> None:
    # given a waiting job with its request, and a cancelled one without
    healthy = _parked_job(principal)
    done = job_submit(principal=principal.user, spec=SubmitSpec(job_type="demo.noop", inputs={"n": 2},
                                                                session_id="s")).job
    Job.objects.filter(pk=done.pk).update(status=JobStatus.CANCELLED)
    ApprovalRequest.objects.filter(job=done).delete()
    # when the tick runs; then nothing is opened
    assert approvals_repair() == 0
    assert ApprovalRequest.objects.filter(job=healthy).count() == 1
    assert not ApprovalRequest.objects.filter(job=done).exists()
