"""Approvals over REST with real workers: approve-then-commit, deny, expiry, self-approval,
the two-approver rule, modified inputs re-checked by policy, and replay from the dead-letter queue."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from approvals.models import ApprovalRequest
from audit.models import AuditStamp
from examples.models import ExternalRecord
from jobs.models import Job, JobRun
from jobs.services.operations import job_rollback
from tests.conftest import wait_status
from tests.factories import PolicyRuleFactory
from tests.harness import wait_until

pytestmark = pytest.mark.integration


def client_for(make_principal: Any, username: str, grants: tuple[str, ...], **kwargs: Any) -> tuple[APIClient, Any]:
    who = make_principal(username, grants, **kwargs)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {who.token}")
    return client, who


def pending_approval(job_id: str, timeout: float = 30.0) -> ApprovalRequest:
    return wait_until(
        lambda: ApprovalRequest.objects.filter(job_id=job_id, status="pending").first(),
        timeout=timeout, message=f"pending approval for {job_id}",
    )


def events(job_id: str) -> list[tuple[str, str]]:
    return list(AuditStamp.objects.filter(job_id=job_id).order_by("seq").values_list("event", "actor"))


@pytest.fixture
def reviewer(make_principal: Any) -> APIClient:
    return client_for(make_principal, "reviewer", ("approve:*",))[0]


def submit_reviewed(submit: Any, key: str, data: dict[str, Any] | None = None) -> str:
    body = submit("demo.reviewed_store_write", {"key": key, "data": data or {"v": 1}, "api_token": "s3cret"}).json()
    return str(body["job_id"])


def test_approve_then_commit_and_rollback(live: Any, submit: Any, reviewer: APIClient, make_principal: Any) -> None:
    # given a high-risk job that drafted its change and waits for review before commit
    job_id = submit_reviewed(submit, "k-approve")
    job = wait_status(job_id, "pending_approval")
    approval = pending_approval(job_id)
    assert job.stage == "finalize" and approval.checkpoint == "before_commit"
    assert ExternalRecord.objects.filter(key="k-approve").count() == 0
    # when the reviewer lists, reads and approves it
    listed = reviewer.get("/api/v1/approvals?status=pending").json()["results"]
    assert [a["approval_id"] for a in listed] == [approval.public_id]
    detail = reviewer.get(f"/api/v1/approvals/{approval.public_id}")
    assert detail.status_code == 200
    review = detail.json()["review"]
    assert review["summary"] == "Write record 'k-approve' to the local store"
    assert review["rollback"] and review["impact"] and review["proposal"]["key"] == "k-approve"
    assert "s3cret" not in detail.content.decode() and review["secret_fields"] == ["api_token"]
    answer = reviewer.post(f"/api/v1/approvals/{approval.public_id}/approve", {"comment": "looks right"}, format="json")
    assert answer.status_code == 200, answer.content
    # then the commit runs and writes exactly once, with the reviewer in the trail
    job = wait_status(job_id, "succeeded")
    assert ExternalRecord.objects.filter(key="k-approve").count() == 1
    assert ("approval_granted", "principal:reviewer") in events(job_id)
    assert ("approved", "principal:reviewer") in events(job_id)
    # and an operator can roll the commit back, once, stamped
    ops = make_principal("ops", (), staff=True).user
    assert job_rollback(job=job, actor=ops) == {"deleted": 1}
    assert ExternalRecord.objects.filter(key="k-approve").count() == 0
    assert ("rolled_back", "principal:ops") in events(job_id)


def test_deny_cancels_the_job_without_commit(live: Any, submit: Any, reviewer: APIClient) -> None:
    # given a job waiting for review
    job_id = submit_reviewed(submit, "k-deny")
    approval = pending_approval(job_id)
    # when the reviewer denies it
    answer = reviewer.post(f"/api/v1/approvals/{approval.public_id}/deny", {"comment": "wrong key"}, format="json")
    assert answer.status_code == 200, answer.content
    # then the job is cancelled with reason denied and nothing was written
    job = Job.objects.get(pk=job_id)
    assert (job.status, job.reason) == ("cancelled", "denied")
    assert ExternalRecord.objects.filter(key="k-deny").count() == 0
    # and a second decision is refused with a stable code
    again = reviewer.post(f"/api/v1/approvals/{approval.public_id}/approve", {}, format="json")
    assert (again.status_code, again.json()["code"]) == (409, "already_decided")


def test_expired_request_cancels_the_job(live: Any, submit: Any, reviewer: APIClient) -> None:
    # given a job waiting for review whose request has run out of time
    job_id = submit_reviewed(submit, "k-expire")
    approval = pending_approval(job_id)
    ApprovalRequest.objects.filter(pk=approval.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    # when beat's approvals.expire runs
    job = wait_status(job_id, "cancelled", timeout=30)
    # then the job is cancelled with reason expired, and deciding now is refused
    assert job.reason == "expired"
    assert ApprovalRequest.objects.get(pk=approval.pk).status == "expired"
    late = reviewer.post(f"/api/v1/approvals/{approval.public_id}/approve", {}, format="json")
    assert (late.status_code, late.json()["code"]) == (409, "already_decided")


def test_self_approval_is_refused_and_others_cannot_probe(live: Any, submit: Any, make_principal: Any) -> None:
    # given a submitter who also holds the approver grant, and a user without it
    from governance.models import Grant

    agent = make_principal("agent", ("approve:*",))
    own = APIClient()
    own.credentials(HTTP_AUTHORIZATION=f"Token {agent.token}")
    outsider, _ = client_for(make_principal, "outsider", ("approve:crm",))
    job_id = submit_reviewed(submit, "k-self")
    approval = pending_approval(job_id)
    assert Grant.objects.filter(user=agent.user, permission="approve:*").exists()
    # when each tries to approve
    mine = own.post(f"/api/v1/approvals/{approval.public_id}/approve", {}, format="json")
    theirs = outsider.post(f"/api/v1/approvals/{approval.public_id}/approve", {}, format="json")
    # then the submitter (who may see the request) is refused with a stable code, and the user
    # who may neither see nor decide it gets the same 404 as for an id that does not exist
    assert (mine.status_code, mine.json()["code"]) == (403, "self_approval")
    assert (theirs.status_code, theirs.json()["code"]) == (404, "not_found")
    assert Job.objects.get(pk=job_id).status == "pending_approval"
    assert outsider.get(f"/api/v1/approvals/{approval.public_id}").status_code == 404


def test_two_distinct_approvers_are_needed(live: Any, submit: Any, make_principal: Any) -> None:
    # given a rule asking for two approvers for this job type
    PolicyRuleFactory.create(order=1, name="two-eyes", job_type="demo.reviewed_store_write",
                             decision="require_approval", approvers=2)
    first, _ = client_for(make_principal, "rev-one", ("approve:store",))
    second, _ = client_for(make_principal, "rev-two", ("approve:*",))
    job_id = submit_reviewed(submit, "k-two")
    approval = pending_approval(job_id)
    assert approval.required_approvals == 2
    # when the first approves (and tries again)
    assert first.post(f"/api/v1/approvals/{approval.public_id}/approve", {}, format="json").status_code == 200
    twice = first.post(f"/api/v1/approvals/{approval.public_id}/approve", {}, format="json")
    # then the job still waits and the repeat is refused
    assert (twice.status_code, twice.json()["code"]) == (409, "already_voted")
    assert Job.objects.get(pk=job_id).status == "pending_approval"
    # when a second, distinct approver approves
    assert second.post(f"/api/v1/approvals/{approval.public_id}/approve", {}, format="json").status_code == 200
    # then the job commits
    wait_status(job_id, "succeeded")
    assert ExternalRecord.objects.filter(key="k-two").count() == 1


def test_modified_inputs_are_revalidated_and_rechecked_by_policy(
    live: Any, submit: Any, reviewer: APIClient
) -> None:
    # given a rule blocking large amounts and a job drafted with a small one
    PolicyRuleFactory.create(order=1, name="cap", job_type="demo.*", decision="block", reason="amount over cap",
                             conditions=[{"path": "data.amount", "op": "gt", "value": 1000}])
    job_id = submit_reviewed(submit, "k-mod", {"amount": 10})
    approval = pending_approval(job_id)
    url = f"/api/v1/approvals/{approval.public_id}/approve"
    # when the reviewer changes the amount over the cap, or breaks the schema, or touches a secret
    blocked = reviewer.post(url, {"inputs": {"data": {"amount": 5000}}}, format="json")
    invalid = reviewer.post(url, {"inputs": {"key": ""}}, format="json")
    secret = reviewer.post(url, {"inputs": {"api_token": "other"}}, format="json")
    # then each is refused with its code and nothing changed
    assert (blocked.status_code, blocked.json()["code"]) == (403, "policy_blocked")
    assert (invalid.status_code, invalid.json()["code"]) == (400, "invalid_inputs")
    assert (secret.status_code, secret.json()["code"]) == (400, "invalid_inputs")
    assert Job.objects.get(pk=job_id).inputs["data"] == {"amount": 10}
    # when the reviewer approves with an allowed change
    ok = reviewer.post(url, {"comment": "halve it", "inputs": {"data": {"amount": 5}}}, format="json")
    assert ok.status_code == 200, ok.content
    # then the job drafts again from the new inputs and the new proposal is reviewed again
    second = wait_until(
        lambda: ApprovalRequest.objects.filter(job_id=job_id, status="pending").exclude(pk=approval.pk).first(),
        timeout=30, message="second review",
    )
    assert (Job.objects.get(pk=job_id).proposal or {})["data"] == {"amount": 5}
    granted = AuditStamp.objects.get(job_id=job_id, event="approval_granted", details__approval_id=approval.public_id)
    assert granted.details["modified_fields"] == ["data"]
    assert "s3cret" not in str(granted.details)
    assert reviewer.post(f"/api/v1/approvals/{second.public_id}/approve", {}, format="json").status_code == 200
    wait_status(job_id, "succeeded")
    assert list(ExternalRecord.objects.filter(key="k-mod").values_list("data", flat=True)) == [{"amount": 5}]
    assert JobRun.objects.filter(job_id=job_id, stage="execute").count() == 2


def test_replay_resumes_at_the_failed_stage_and_records_who(
    live: Any, submit: Any, api: APIClient, make_principal: Any
) -> None:
    # given a two-stage job dead-lettered in finalize (its commit keeps failing)
    job_id = submit("demo.local_store_write", {"key": "k-replay", "data": {}, "fail_commit_times": 10}).json()["job_id"]
    job = wait_status(job_id, "dead_lettered", timeout=60)
    assert (job.stage, job.error_class) == ("finalize", "retries_exhausted")
    executes = JobRun.objects.filter(job_id=job_id, stage="execute").count()
    operator, _ = client_for(make_principal, "oper", ("jobs:replay",))
    # when its submitter (not an operator) and then an operator replay it
    refused = api.post(f"/api/v1/jobs/{job_id}/replay", format="json")
    answer = operator.post(f"/api/v1/jobs/{job_id}/replay", format="json")
    # then only the operator's replay is accepted, and the job runs finalize again, not execute
    assert (refused.status_code, refused.json()["code"]) == (403, "permission_denied")
    assert answer.status_code == 202, answer.content
    assert answer.json()["stage"] == "finalize"
    wait_until(lambda: JobRun.objects.filter(job_id=job_id, stage="finalize").count() > 3, timeout=30,
               message="a new finalize run")
    assert JobRun.objects.filter(job_id=job_id, stage="execute").count() == executes
    stamp = AuditStamp.objects.get(job_id=job_id, event="replayed")
    assert (stamp.actor, stamp.from_status, stamp.to_status) == ("principal:oper", "dead_lettered", "queued")
    assert stamp.details["replayed_by"] == "principal:oper"
    # and replaying a job that is no longer dead-lettered is refused (its retries take seconds)
    again = operator.post(f"/api/v1/jobs/{job_id}/replay", format="json")
    assert (again.status_code, again.json()["code"]) == (409, "not_dead_lettered")
