"""Governance inside the worker, with real Celery workers on PostgreSQL + Redis.

Every bypass below must be refused, stamped and never executed. "Never executed" is proven with
demo.local_store_write: its execute handler produces the proposal (and a ``store.lookup`` tool
call) and its commit writes an ExternalRecord, so no proposal, no tool call and no record means
no handler ran.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.utils import timezone

from audit.models import AuditStamp
from config.celery import app
from examples.models import ExternalRecord
from governance.services import grant_revoke
from jobs.models import Job, JobRun
from tests import harness
from tests.conftest import wait_status
from tests.factories import PolicyRuleFactory, admit
from tests.harness import wait_until

pytestmark = pytest.mark.integration

SECRET = "sk-int-91c2d7e4aa0b3f58"


def held_back(submit: Any, key: str, **inputs: Any) -> Job:
    """Submit a store write that waits (far ``run_after``) so the test can change the world first."""
    run_after = (timezone.now() + timedelta(hours=1)).isoformat()
    body = submit("demo.local_store_write", {"key": key, "data": {}, **inputs}, run_after=run_after).json()
    return Job.objects.get(pk=body["job_id"])


def release(job: Job) -> None:
    Job.objects.filter(pk=job.pk).update(run_after=timezone.now(), dispatched_at=None)


def assert_never_executed(job_id: str, key: str) -> None:
    job = Job.objects.get(pk=job_id)
    assert job.proposal is None and job.result is None
    assert not ExternalRecord.objects.filter(key=key).exists()
    # The claim opened a run; it ended at the re-check, before any handler (no tool call).
    for run in JobRun.objects.filter(job_id=job_id):
        assert run.outcome == "failed" and run.error_class == "policy_violation" and run.tools_used == []


def test_grant_revoked_after_submit_dead_letters_before_the_handler(live: Any, submit: Any, principal: Any) -> None:
    # given an admitted job, then its principal loses the grant it needs
    job = held_back(submit, "k-revoked")
    assert grant_revoke(username=principal.user.username, permissions=["store:write"]) == ["store:write"]
    # when it reaches a worker
    release(job)
    dead = wait_status(job.id, "dead_lettered")
    # then it is quarantined as a policy violation, stamped with the missing grant, and never ran
    assert dead.error_class == "policy_violation" and dead.reason == "policy_violation"
    stamp = AuditStamp.objects.filter(job_id=job.id, event="dead_lettered").get()
    assert stamp.details["missing_permissions"] == ["store:write"]
    assert stamp.details["error_class"] == "policy_violation"
    assert stamp.details["worker"] and stamp.details["retry_count"] == 1
    assert_never_executed(job.id, "k-revoked")


def test_policy_turned_to_block_after_submit_stops_execution(live: Any, submit: Any) -> None:
    # given an admitted job, then an operator adds a rule blocking its type
    job = held_back(submit, "k-blocked-later")
    allowed_version = job.policy_decision["policy_version"]
    rule = PolicyRuleFactory.create(order=1, name="freeze store", job_type="demo.local_store_*",
                                    decision="block", reason="store frozen for audit")
    # when it reaches a worker
    release(job)
    dead = wait_status(job.id, "dead_lettered")
    # then it is dead-lettered with the blocking rule and the new policy version on the stamp
    assert dead.error_class == "policy_violation"
    stamp = AuditStamp.objects.filter(job_id=job.id, event="dead_lettered").get()
    assert stamp.details["policy"]["rule_id"] == rule.pk
    assert stamp.details["policy"]["policy_version"] != allowed_version
    assert "store frozen for audit" in dead.error
    assert_never_executed(job.id, "k-blocked-later")


def test_worker_stamps_the_policy_it_checked_on_success(live: Any, submit: Any) -> None:
    # given an allow rule for the type
    rule = PolicyRuleFactory.create(order=1, name="noop ok", job_type="demo.noop", decision="allow")
    # when a job runs
    job = wait_status(submit("demo.noop", {}).json()["job_id"], "succeeded")
    # then the success stamp records the worker's decision: rule, version, path, worker, model version
    stamp = AuditStamp.objects.get(job_id=job.id, event="succeeded")
    assert stamp.details["policy"]["rule_id"] == rule.pk
    assert stamp.details["policy"]["policy_version"] == job.policy_decision["policy_version"]
    assert stamp.details["policy"]["path"] == [f"rule:{rule.pk}:noop ok:allow"]
    assert stamp.details["worker"] and "model_version" in stamp.details and stamp.details["tools_used"] == []


def test_secret_reaches_the_handler_and_nothing_else(live: Any, web: harness.WebServer, submit: Any, api: Any,
                                                     principal: Any) -> None:
    # given a store write with a secret token
    body = submit("demo.local_store_write", {"key": "k-secret", "data": {"a": 1}, "api_token": SECRET},
                  session_id="s-secret").json()
    # when it runs to the end
    job = wait_status(body["job_id"], "succeeded")
    # then the handler saw the token
    assert job.proposal["token_seen"] is True
    assert ExternalRecord.objects.filter(key="k-secret").count() == 1
    # and no API response carries it: detail, list, audit, events
    for url in (f"/api/v1/jobs/{job.id}", "/api/v1/jobs?session_id=s-secret", f"/api/v1/jobs/{job.id}/audit"):
        page = api.get(url)
        assert page.status_code == 200 and SECRET not in page.content.decode(), url
    # the event stream over a real socket, from the web server the platform runs
    events = httpx.get(f"{web.url}/api/v1/jobs/{job.id}/events", timeout=30,
                       headers={"Authorization": f"Token {principal.token}"})
    stream = events.text
    assert "event: end" in stream and SECRET not in stream
    # nor any stamp, run or stored output
    assert not AuditStamp.objects.filter(details__icontains=SECRET).exists()
    assert SECRET not in json.dumps([job.inputs, job.normalized_inputs, job.proposal, job.result, job.error])
    assert not JobRun.objects.filter(job_id=job.id, error__contains=SECRET).exists()
    # nor a line of the worker's log
    assert SECRET not in live["worker"].log()


def test_scope_locked_worker_refuses_and_a_worker_for_the_scope_runs_it(live: Any, submit: Any) -> None:
    # given a worker locked to scope "crm" consuming its own queue
    crm = harness.start_worker(name="crm-only", queues=["execute.crm"], concurrency=1,
                               env={"JOBS_WORKER_SCOPES": "crm"})
    try:
        # and a "store" job whose message is (mis)routed to that queue
        job = held_back(submit, "k-scope")
        token = admit(job, release=True)
        app.send_task("jobs.execute", args=[job.id, "execute", token], queue="execute.crm")
        # when the crm worker takes it, it refuses with a stamp, and the job goes back to queued
        refusal = wait_until(lambda: AuditStamp.objects.filter(job_id=job.id, event="scope_refused").first(),
                             timeout=30, message="scope refusal stamp")
        assert refusal.actor.startswith("worker:crm-only")
        assert refusal.to_status == "queued" and "store" in refusal.details["reason"]
        refused_run = JobRun.objects.get(job_id=job.id)
        assert refused_run.outcome == "refused" and refused_run.tools_used == []
        assert not ExternalRecord.objects.filter(key="k-scope").exists()
        # then after the redispatch window the dispatcher publishes it to the shared queue and an
        # unrestricted worker runs it
        done = wait_status(job.id, "succeeded", timeout=60)
        runs = JobRun.objects.filter(job_id=job.id, outcome="succeeded")
        assert {r.stage for r in runs} == {"execute", "finalize"}
        assert all(not r.worker.startswith("crm-only") for r in runs)
        assert ExternalRecord.objects.filter(key="k-scope").count() == 1
        assert done.attempts == 0
    finally:
        crm.stop()


def test_scope_queues_route_jobs_to_their_scope_workers(live: Any, submit: Any, settings: Any) -> None:
    # given "demo" has its own queues, consumed by a worker locked to "demo"
    settings.JOBS_SCOPE_QUEUES = ["demo"]
    demo = harness.start_worker(name="demo-only", queues=["execute.demo"], concurrency=1,
                                env={"JOBS_WORKER_SCOPES": "demo", "JOBS_SCOPE_QUEUES": "demo"})
    try:
        # when a demo job is submitted (the dispatch after commit routes it to execute.demo)
        job = wait_status(submit("demo.noop", {}).json()["job_id"], "succeeded", timeout=45)
        # then the demo worker ran it, and nothing was refused
        run = JobRun.objects.get(job_id=job.id)
        assert run.worker.startswith("demo-only")
        assert not AuditStamp.objects.filter(job_id=job.id, event__in=["scope_refused", "claim_refused"]).exists()
    finally:
        demo.stop()


def test_forged_messages_are_refused_stamped_and_never_executed(live: Any, submit: Any) -> None:
    # given an admitted job with a known dispatch token that no dispatcher will publish
    job = held_back(submit, "k-forged")
    token = admit(job)
    # when messages with forged fields are sent straight to the queues
    app.send_task("jobs.execute", args=[job.id, "finalize", token], queue="execute")  # wrong stage
    app.send_task("jobs.finalize", args=[job.id, "finalize", token], queue="finalize")  # job is at execute
    app.send_task("jobs.execute", args=[job.id, "execute", "tok-forged"], queue="execute")  # forged token
    app.send_task("jobs.execute", args=[job.id, "execute", token, {"as": "root"}], queue="execute")  # extra
    app.send_task("jobs.execute", args=[job.id, "execute"], kwargs={"token": token, "principal": 1},
                  queue="execute")  # extra kwarg
    app.send_task("jobs.execute", args=[12345, "execute", token], queue="execute")  # non-string id
    app.send_task("jobs.execute", args=["job_nosuchjob123", "execute", "x"], queue="execute")  # unknown id
    # then each is refused with its reason, stamped
    expected = ["malformed_stage", "stage_mismatch", "dispatch_token_mismatch", "malformed_message",
                "malformed_message"]

    def reasons() -> list[str] | None:
        got = list(AuditStamp.objects.filter(job_id=job.id, event="claim_refused")
                   .values_list("details__reason", flat=True))
        return got if len(got) >= len(expected) else None

    assert sorted(wait_until(reasons, timeout=30, message="five refusals")) == sorted(expected)
    wait_until(lambda: AuditStamp.objects.filter(job_id="12345", event="claim_refused").exists(), timeout=20,
               message="non-string id refusal")
    assert AuditStamp.objects.get(job_id="12345").details["reason"] == "malformed_job_id"
    wait_until(lambda: AuditStamp.objects.filter(job_id="job_nosuchjob123").exists(), timeout=20,
               message="unknown id refusal")
    assert AuditStamp.objects.get(job_id="job_nosuchjob123").details["reason"] == "unknown_job"
    # and nothing ran: still queued, no run, no proposal, no record
    fresh = Job.objects.get(pk=job.id)
    assert fresh.status == "queued" and fresh.proposal is None
    assert not JobRun.objects.filter(job_id=job.id).exists()
    assert not ExternalRecord.objects.filter(key="k-forged").exists()


def test_message_for_a_succeeded_job_is_refused(live: Any, submit: Any) -> None:
    # given a job that already succeeded
    job = wait_status(submit("demo.local_store_write", {"key": "k-done", "data": {}}).json()["job_id"], "succeeded")
    runs_before = JobRun.objects.filter(job_id=job.id).count()
    # when its stage messages arrive again, with an empty and a guessed token
    app.send_task("jobs.execute", args=[job.id, "execute", ""], queue="execute")
    app.send_task("jobs.finalize", args=[job.id, "finalize", "guess"], queue="finalize")
    # then both are refused as not claimable, and nothing ran again
    wait_until(lambda: AuditStamp.objects.filter(job_id=job.id, event="claim_refused").count() >= 2,
               timeout=20, message="two refusals")
    assert set(AuditStamp.objects.filter(job_id=job.id, event="claim_refused")
               .values_list("details__reason", flat=True)) == {"not_claimable:succeeded"}
    assert JobRun.objects.filter(job_id=job.id).count() == runs_before
    assert ExternalRecord.objects.filter(key="k-done").count() == 1


def test_policy_turned_to_require_approval_after_submit_parks_the_job_for_a_human(
    live: Any, submit: Any, make_principal: Any
) -> None:
    from approvals.models import ApprovalRequest
    from approvals.services import approval_approve

    # given an admitted store write, held back, and a rule added afterwards that wants a review
    job = held_back(submit, "k-late-review")
    PolicyRuleFactory.create(order=1, name="review store writes", job_type="demo.local_store_write",
                             decision="require_approval", approvers=1, checkpoint="before_execute")
    # when a worker picks it up
    release(job)
    parked = wait_status(job.pk, "pending_approval", timeout=30)
    # then it was parked before the handler ran: no proposal, no effect, refused run, not an attempt
    assert parked.approval_checkpoint == "before_execute" and parked.proposal is None
    assert parked.attempts == 0 and parked.claims == 0
    assert list(JobRun.objects.filter(job_id=job.pk).values_list("outcome", flat=True)) == ["refused"]
    assert AuditStamp.objects.filter(job_id=job.pk, event="approval_required").exists()
    assert not ExternalRecord.objects.filter(key="k-late-review").exists()
    request = wait_until(lambda: ApprovalRequest.objects.filter(job_id=job.pk, status="pending").first(),
                         timeout=10, message="approval request")
    # and once a reviewer approves, it resumes at the same stage and finishes
    reviewer = make_principal("late-reviewer", grants=("approve:*",))
    approval_approve(approval=request, actor=reviewer.user, comment="ok")
    done = wait_status(job.pk, "succeeded", timeout=30)
    assert ExternalRecord.objects.filter(key="k-late-review").count() == 1
    assert [r.stage for r in JobRun.objects.filter(job_id=done.pk, outcome="succeeded").order_by("started_at")] == [
        "execute", "finalize"]
