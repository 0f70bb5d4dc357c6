"""The admin review console with real workers: the same decisions as over REST, plus the
dead-letter queue (replay, discard) and rollback — every action through the shared services."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.utils import quote
from django.test import Client

from approvals.models import ApprovalRequest
from audit.models import AuditStamp
from examples.models import ExternalRecord
from jobs.models import Job, JobRun
from tests.conftest import wait_status
from tests.factories import PolicyRuleFactory
from tests.harness import wait_until

pytestmark = pytest.mark.integration


def staff_client(make_principal: Any, username: str, grants: tuple[str, ...]) -> Client:
    who = make_principal(username, grants, staff=True)
    client = Client()
    client.force_login(who.user)
    return client


def pending(job_id: str) -> ApprovalRequest:
    return wait_until(lambda: ApprovalRequest.objects.filter(job_id=job_id, status="pending").first(),
                      timeout=30, message="pending approval")


def decide(client: Client, approval: ApprovalRequest, action: str, *, confirm: bool = True, **fields: str) -> Any:
    url = f"/admin/approvals/approvalrequest/{approval.pk}/decide/"
    data = {"action": action, "comment": fields.get("comment", ""), "inputs": fields.get("inputs", "")}
    first = client.post(url, data)
    assert first.status_code == 200 and b"btn-confirm" in first.content  # the confirmation step
    if not confirm:
        return first
    return client.post(url, {**data, "confirmed": "yes"}, follow=True)


@pytest.fixture
def reviewer(make_principal: Any) -> Client:
    return staff_client(make_principal, "reviewer", ("approve:*",))


def test_admin_review_approve_then_commit(live: Any, submit: Any, reviewer: Client) -> None:
    # given a job waiting for review before commit
    inputs = {"key": "a-ok", "data": {"x": 1}, "api_token": "s3cret"}
    job_id = submit("demo.reviewed_store_write", inputs).json()["job_id"]
    approval = pending(job_id)
    # when the reviewer opens the console: badge, list, review page
    index = reviewer.get("/admin/")
    assert b'id="pending-approvals-count"' in index.content and b">1</span>" in index.content
    listing = reviewer.get("/admin/approvals/approvalrequest/", follow=True)
    assert job_id.encode() in listing.content
    page = reviewer.get(f"/admin/approvals/approvalrequest/{approval.pk}/change/")
    assert page.status_code == 200
    for text in (b"Write record &#x27;a-ok&#x27; to the local store", b"review-rollback", b"audit-trail",
                 b"approval_requested"):
        assert text in page.content
    assert b"s3cret" not in page.content
    # and approves after the confirmation step
    done = decide(reviewer, approval, "approve", comment="fine")
    assert b"approve recorded" in done.content
    # then the job commits once
    wait_status(job_id, "succeeded")
    assert ExternalRecord.objects.filter(key="a-ok").count() == 1


def test_admin_deny_self_approval_and_missing_confirmation(
    live: Any, submit: Any, reviewer: Client, make_principal: Any
) -> None:
    # given two waiting jobs, and a staff submitter who also holds the approver grant
    submitter = staff_client(make_principal, "agent", ("approve:*", "store:write"))
    first = pending(submit("demo.reviewed_store_write", {"key": "a-deny", "data": {}}).json()["job_id"])
    # when the submitter tries to approve their own job
    own = decide(submitter, first, "approve")
    # then it is refused with the stable code
    assert b"Refused (self_approval)" in own.content
    # when the reviewer only opens the confirmation step, nothing is decided yet
    decide(reviewer, first, "deny", confirm=False, comment="no")
    assert Job.objects.get(pk=first.job_id).status == "pending_approval"
    # when the reviewer confirms the deny
    decide(reviewer, first, "deny", comment="no")
    # then the job is cancelled as denied
    job = Job.objects.get(pk=first.job_id)
    assert (job.status, job.reason) == ("cancelled", "denied")


def test_admin_two_approvers_and_modified_inputs(
    live: Any, submit: Any, reviewer: Client, make_principal: Any
) -> None:
    # given two approvers required and a cap on amounts
    PolicyRuleFactory.create(order=1, name="cap", job_type="demo.*", decision="block",
                             conditions=[{"path": "data.amount", "op": "gt", "value": 1000}])
    PolicyRuleFactory.create(order=2, name="two-eyes", job_type="demo.reviewed_store_write",
                             decision="require_approval", approvers=2)
    other = staff_client(make_principal, "reviewer2", ("approve:store",))
    job_id = submit("demo.reviewed_store_write", {"key": "a-two", "data": {"amount": 1}}).json()["job_id"]
    approval = pending(job_id)
    # when the first reviewer raises the amount over the cap, then approves a valid change
    blocked = decide(reviewer, approval, "approve", inputs='{"data": {"amount": 5000}}')
    assert b"Refused (policy_blocked)" in blocked.content
    decide(reviewer, approval, "approve", inputs='{"data": {"amount": 7}}')
    assert Job.objects.get(pk=job_id).status == "pending_approval"  # one of two
    decide(other, approval, "approve")
    # then the job drafts again with the change and waits for a new review by two
    second = wait_until(
        lambda: ApprovalRequest.objects.filter(job_id=job_id, status="pending").exclude(pk=approval.pk).first(),
        timeout=30, message="second review")
    assert second.required_approvals == 2
    decide(reviewer, second, "approve")
    decide(other, second, "approve")
    wait_status(job_id, "succeeded")
    assert list(ExternalRecord.objects.filter(key="a-two").values_list("data", flat=True)) == [{"amount": 7}]


def test_admin_dead_letter_replay_discard_and_rollback(live: Any, submit: Any, reviewer: Client,
                                                        make_principal: Any) -> None:
    # given two dead-lettered jobs and a succeeded job with a rollback handler
    a = submit("demo.flaky", {"permanent": True}, session_id="s-dlq").json()["job_id"]
    b = submit("demo.flaky", {"permanent": True}, session_id="s-dlq").json()["job_id"]
    c = submit("demo.local_store_write", {"key": "a-rb", "data": {}}).json()["job_id"]
    for job_id in (a, b):
        wait_status(job_id, "dead_lettered")
    wait_status(c, "succeeded")
    from django.contrib.auth.models import Permission

    operator = staff_client(make_principal, "ops", ())
    ops_user = make_principal("ops", ()).user
    ops_user.user_permissions.add(Permission.objects.get(codename="view_job"))  # to reach the jobs list
    # when the operator filters the queue and opens one job
    listing = operator.get("/admin/jobs/deadletteredjob/?error_class__exact=permanent&session=s-dlq")
    assert a.encode() in listing.content and b.encode() in listing.content
    detail = operator.get(f"/admin/jobs/deadletteredjob/{quote(a)}/change/")
    assert b"asked to fail permanently" in detail.content and b"dead_lettered" in detail.content
    # and replays it (confirmation, then the service)
    url = f"/admin/jobs/deadletteredjob/{a}/replay/"
    assert b"btn-confirm" in operator.post(url).content
    operator.post(url, {"confirmed": "yes"})
    # then it runs again from its failed stage and the trail says who replayed it
    wait_until(lambda: JobRun.objects.filter(job_id=a).count() == 2, timeout=30, message="second run")
    stamp = AuditStamp.objects.get(job_id=a, event="replayed")
    assert stamp.actor == "principal:ops" and stamp.details["stage"] == "execute"
    # when the other is discarded in bulk with a reason
    changelist = "/admin/jobs/deadletteredjob/"
    ask = operator.post(changelist, {"action": "discard_selected", "_selected_action": [b], "index": "0"})
    assert b"id_reason" in ask.content
    operator.post(changelist, {"action": "discard_selected", "_selected_action": [b], "confirmed": "yes",
                               "reason": "duplicate of another"})
    job = Job.objects.get(pk=b)
    assert (job.status, job.reason) == ("cancelled", "discarded: duplicate of another")
    # when the succeeded job is rolled back from the jobs list
    operator.post("/admin/jobs/job/", {"action": "rollback_selected", "_selected_action": [c], "index": "0"})
    # then its record is gone and the trail records it
    assert ExternalRecord.objects.filter(key="a-rb").count() == 0
    assert AuditStamp.objects.filter(job_id=c, event="rolled_back", actor="principal:ops").exists()
