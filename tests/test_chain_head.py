"""The chain head on the job row: every writer of a job's trail moves it, and races stay correct.

Each job row carries its audit chain's last seq and hash (``jobs.chain``). A stamp is written
with a compare-and-set on that head instead of a lookup of the last stamp and a savepoint, so
these tests check (1) after every kind of writer the row's head is the chain's real last stamp
and the chain verifies; (2) a writer holding a stale head (another stamp landed since it read
the row) retries on the new head and never forks the chain; (3) refusals for ids that are no
job still get their own orphan chain.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from approvals.models import ApprovalRequest
from approvals.services import approval_approve
from audit.models import AuditStamp
from audit.selectors import audit_verify
from audit.services import ChainHead
from jobs.chain import job_stamp
from jobs.models import Job, JobStatus
from jobs.registry import registry
from jobs.services.control import jobs_cancel
from jobs.services.submit import SubmitSpec, job_submit
from jobs.transitions import job_transition
from jobs.worker.context import JobContext
from jobs.worker.outcomes import complete_stage
from jobs.worker.runner import job_claim, stage_run
from tests.harness import race


def _submit(principal: Any, job_type: str = "demo.noop", inputs: dict[str, Any] | None = None, **kw: Any) -> Job:
    # A far run_after keeps the dispatcher (and any live worker) away; tests admit by hand.
    kw.setdefault("run_after", timezone.now() + timedelta(hours=1))
    return job_submit(principal=principal.user, spec=SubmitSpec(job_type=job_type, inputs=inputs or {},
                                                                session_id="s-head", **kw)).job


def _admit(job_id: str, token: str = "tok") -> str:
    Job.objects.filter(pk=job_id).update(dispatch_token=token, dispatched_at=timezone.now())
    return token


def assert_head(job_id: str) -> None:
    """The row's head is the chain's last stamp, and the chain verifies."""
    row = Job.objects.filter(pk=job_id).values_list("chain_seq", "chain_hash").get()
    last = AuditStamp.objects.filter(job_id=job_id).order_by("-seq").values_list("seq", "hash").first()
    assert last is not None and row == last, (row, last)
    report = audit_verify(job_id=job_id)
    assert report.ok, report.broken


@pytest.mark.django_db
def test_submit_claim_and_finish_keep_the_head(principal: Any) -> None:
    # given a submitted job
    job = _submit(principal)
    assert_head(job.id)
    # when a worker runs it
    outcome = stage_run(job_id=job.id, stage="execute", token=_admit(job.id), worker="w1")
    # then each stamp moved the head with it
    assert outcome.outcome == "succeeded"
    assert list(AuditStamp.objects.filter(job_id=job.id).order_by("seq").values_list("event", flat=True)) == [
        "submitted", "claimed", "succeeded"]
    assert_head(job.id)


@pytest.mark.django_db
def test_refusals_on_a_job_and_on_an_unknown_id(principal: Any) -> None:
    # given a queued job admitted with a token
    job = _submit(principal)
    _admit(job.id, "good")
    # when a message with a stale token and one for an id that is no job arrive
    stale = stage_run(job_id=job.id, stage="execute", token="stale", worker="w1")
    ghost = stage_run(job_id="job_does_not_exist", stage="execute", token="x", worker="w1")
    # then both are refused and stamped: on the job's chain (head moved), and on an orphan chain
    assert (stale.outcome, ghost.outcome) == ("refused", "refused")
    assert AuditStamp.objects.filter(job_id=job.id, event="claim_refused").count() == 1
    assert_head(job.id)
    orphan = AuditStamp.objects.get(job_id="job_does_not_exist")
    assert (orphan.seq, orphan.prev_hash, orphan.event) == (1, "", "claim_refused")
    # and the job still runs with the right token
    assert stage_run(job_id=job.id, stage="execute", token="good", worker="w1").outcome == "succeeded"
    assert_head(job.id)


@pytest.mark.django_db
def test_a_stamp_landing_while_a_job_runs_is_followed_by_the_finish(principal: Any) -> None:
    # given a job claimed by a worker, which holds the head it wrote with the claim
    job = _submit(principal)
    claimed = job_claim(job_id=job.id, stage="execute", token=_admit(job.id), worker="w1")
    assert isinstance(claimed, tuple)
    running, run = claimed
    held = ChainHead(running.chain_seq, running.chain_hash)
    # when a cancel request is stamped on it meanwhile (bulk path: the head moves under the worker)
    result = jobs_cancel(jobs=Job.objects.filter(pk=job.id), actor="principal:someone")
    assert result.cancelling == [job.id]
    assert Job.objects.get(pk=job.id).chain_seq == held.seq + 1
    # and the worker finishes with the head it held
    ctx = JobContext(job_id=job.id, run_id=run.run_id, stage="execute", attempt=1, session_id="s-head",
                     trace_id=running.trace_id, correlation_id="", conversation_id="", principal="1", worker="w1")
    outcome = complete_stage(running, run, ctx, job_type=registry.get("demo.noop"), output={"ok": True}, worker="w1")
    # then the finish re-read the head and went on after the cancel request, one chain, no fork
    assert outcome.outcome == "succeeded"
    events = list(AuditStamp.objects.filter(job_id=job.id).order_by("seq").values_list("event", flat=True))
    assert events == ["submitted", "claimed", "cancel_requested", "succeeded"]
    assert_head(job.id)


@pytest.mark.django_db
def test_a_stale_head_never_overrides_a_status_guard(principal: Any) -> None:
    # given a queued job and the head read with it
    job = _submit(principal)
    stale = ChainHead(job.chain_seq, job.chain_hash)
    # when it is cancelled (status and head move), then a transition from queued is tried on the old head
    jobs_cancel(jobs=Job.objects.filter(pk=job.id), actor="test")
    moved = job_transition(job_id=job.id, to=JobStatus.RUNNING, allowed_from=[JobStatus.QUEUED], event="claimed",
                           head=stale)
    # then nothing happened: the retry on the new head still meets the status guard
    assert moved is None
    assert Job.objects.get(pk=job.id).status == JobStatus.CANCELLED
    assert not AuditStamp.objects.filter(job_id=job.id, event="claimed").exists()
    assert_head(job.id)


@pytest.mark.django_db
def test_bulk_cancel_moves_every_head(principal: Any) -> None:
    # given queued, pending-approval and running jobs of one session
    queued = [_submit(principal) for _ in range(3)]
    pending = _submit(principal, constraints={"requires_human_ack": True})
    running = _submit(principal)
    assert isinstance(job_claim(job_id=running.id, stage="execute", token=_admit(running.id), worker="w"), tuple)
    # when the session is cancelled in one call
    result = jobs_cancel(jobs=Job.objects.filter(session_id="s-head"), actor="test")
    # then every job's head is its new last stamp
    assert result.cancelled_count == 4 and result.cancelling == [running.id]
    for job in [*queued, pending, running]:
        assert_head(job.id)


@pytest.mark.django_db
def test_approval_stamps_keep_the_head(principal: Any, make_principal: Any) -> None:
    # given a job waiting for a human before execute
    job = _submit(principal, constraints={"requires_human_ack": True})
    assert Job.objects.get(pk=job.id).status == JobStatus.PENDING_APPROVAL
    assert_head(job.id)  # submitted + approval_requested
    # when a reviewer approves it
    reviewer = make_principal("reviewer-head", grants=("approve:*",))
    approval_approve(approval=ApprovalRequest.objects.get(job_id=job.id), actor=reviewer.user, comment="ok")
    # then the vote and the release both moved the head
    events = list(AuditStamp.objects.filter(job_id=job.id).order_by("seq").values_list("event", flat=True))
    assert events == ["submitted", "approval_requested", "approval_granted", "approved"]
    assert_head(job.id)


@pytest.mark.django_db(transaction=True)
def test_concurrent_stamps_on_one_job_all_land_in_one_chain(principal: Any) -> None:
    # given a job
    job = _submit(principal)
    # when eight writers stamp it at the same instant, each with the head it read before
    head = ChainHead(job.chain_seq, job.chain_hash)
    results = race(8, lambda i: job_stamp(job_id=job.id, event="note", actor=f"w{i}", head=head))
    # then every stamp landed, one after another, and the chain verifies
    assert not [r for r in results if isinstance(r, Exception)], results
    seqs = list(AuditStamp.objects.filter(job_id=job.id).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, 10))
    assert_head(job.id)


@pytest.mark.django_db(transaction=True)
def test_a_transition_racing_stamps_wins_once_and_keeps_the_chain(principal: Any) -> None:
    # given a queued job
    job = _submit(principal)
    head = ChainHead(job.chain_seq, job.chain_hash)

    # when two claims and four stamps race on it, all from the same stale head
    def act(i: int) -> Any:
        if i < 2:
            return job_transition(job_id=job.id, to=JobStatus.RUNNING, allowed_from=[JobStatus.QUEUED],
                                  event="claimed", actor=f"w{i}", head=head)
        return job_stamp(job_id=job.id, event="note", actor=f"n{i}", head=head)

    results = race(6, act)
    # then exactly one claim moved the job, every stamp landed, and the chain verifies
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sorted(r is None for r in results[:2]) == [False, True]
    assert AuditStamp.objects.filter(job_id=job.id, event="claimed").count() == 1
    assert AuditStamp.objects.filter(job_id=job.id, event="note").count() == 4
    assert Job.objects.get(pk=job.id).status == JobStatus.RUNNING
    assert_head(job.id)
