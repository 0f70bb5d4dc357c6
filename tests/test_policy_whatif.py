"""Policy what-if: draft rules evaluated over recorded jobs, with no side effects."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from approvals.models import ApprovalRequest
from audit.models import AuditStamp
from governance.models import PolicyRule
from governance.simulate import DraftRulesInvalid, draft_rules_validate, rules_with_drafts
from jobs.models import Job, JobStatus
from jobs.services.policy_whatif import job_submission_records, policy_simulate
from jobs.services.submit import SubmitSpec, job_submit

URL = "/api/v1/policy/simulate"
TYPES = {  # job type → (scope, risk) as registered in examples.job_types
    "demo.noop": ("demo", "low"),
    "demo.local_store_write": ("store", "low"),
    "demo.reviewed_store_write": ("store", "high"),
}


def record_jobs(principal: Any, job_type: str, n: int, *, inputs: dict[str, Any] | None = None,
                age: timedelta = timedelta(hours=1), status: str = JobStatus.SUCCEEDED) -> list[Job]:
    """Recorded jobs written directly (bulk_create), as submit would have stored them."""
    scope, risk = TYPES[job_type]
    at = timezone.now() - age
    rows = [
        Job(principal=principal, job_type=job_type, scope=scope, risk=risk, session_id="s-whatif",
            inputs=dict(inputs or {}), status=status, submitted_status=status, created_at=at, updated_at=at)
        for _ in range(n)
    ]
    return Job.objects.bulk_create(rows, batch_size=2000)


def staff_client(make_principal: Any) -> APIClient:
    staff = make_principal("ops", grants=(), staff=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {staff.token}")
    return client


def table_counts() -> tuple[int, ...]:
    return (Job.objects.count(), AuditStamp.objects.count(), PolicyRule.objects.count(),
            ApprovalRequest.objects.count())


def is_read(sql: str) -> bool:
    """A SELECT, a savepoint, or a server-side cursor over a SELECT (``.iterator()``)."""
    text = " ".join(sql.split()).upper()
    if text.startswith("DECLARE "):
        return " CURSOR FOR SELECT " in text
    return text.startswith(("SELECT ", "SAVEPOINT ", "RELEASE SAVEPOINT ", "CLOSE ", "FETCH "))


BLOCK_NOOP = {"order": 0, "name": "freeze noop", "job_type": "demo.noop", "decision": "block",
              "reason": "incident 42"}


def test_draft_block_rule_reports_counts_and_changes_nothing(make_principal: Any) -> None:
    # given 7 noop jobs and 3 store writes by alice, 2 noop jobs by bob, and one old noop job
    alice = make_principal("alice").user
    bob = make_principal("bob").user
    record_jobs(alice, "demo.noop", 7)
    record_jobs(alice, "demo.local_store_write", 3, inputs={"key": "k", "data": {}})
    bob_jobs = record_jobs(bob, "demo.noop", 2)
    record_jobs(alice, "demo.noop", 5, age=timedelta(days=30))
    client = staff_client(make_principal)
    before = table_counts()
    decisions_before = list(Job.objects.order_by("pk").values_list("pk", "status", "policy_decision"))

    # when a staff user simulates a draft rule blocking demo.noop over the last 7 days
    with CaptureQueriesContext(connection) as queries:
        response = client.post(URL, {"rules": [BLOCK_NOOP]}, format="json")

    # then the counts are right
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["evaluated"] == 12
    assert body["changed"] == 9
    assert body["skipped"] == 0
    assert body["transitions"] == {"allow→block": 9}
    assert body["by_job_type"]["demo.noop"] == {"evaluated": 9, "changed": 9, "transitions": {"allow→block": 9}}
    assert body["by_job_type"]["demo.local_store_write"] == {"evaluated": 3, "changed": 0, "transitions": {}}
    assert body["by_principal"]["alice"]["changed"] == 7
    assert body["by_principal"]["bob"] == {"evaluated": 2, "changed": 2, "transitions": {"allow→block": 2}}
    examples = body["examples"]["allow→block"]
    assert 1 <= len(examples) <= 5
    assert set(examples) <= set(Job.objects.filter(job_type="demo.noop").values_list("pk", flat=True))
    assert body["draft_rules"][0]["name"] == "freeze noop"
    assert bob_jobs[0].pk in {j for j in Job.objects.values_list("pk", flat=True)}
    # and nothing was written: only reads ran, and every table and decision is as it was
    writes = [q["sql"] for q in queries.captured_queries if not is_read(q["sql"])]
    assert writes == []
    assert table_counts() == before
    assert list(Job.objects.order_by("pk").values_list("pk", "status", "policy_decision")) == decisions_before
    assert not PolicyRule.objects.exists()


def test_since_bounds_the_window(make_principal: Any) -> None:
    # given noop jobs 1 h, 2 days and 10 days old
    alice = make_principal("alice").user
    record_jobs(alice, "demo.noop", 1)
    record_jobs(alice, "demo.noop", 2, age=timedelta(days=2))
    record_jobs(alice, "demo.noop", 4, age=timedelta(days=10))
    client = staff_client(make_principal)
    # when simulating with an explicit since of 3 days ago, and with the default (7 days)
    since = (timezone.now() - timedelta(days=3)).isoformat()
    explicit = client.post(URL, {"rules": [BLOCK_NOOP], "since": since}, format="json").json()
    default = client.post(URL, {"rules": [BLOCK_NOOP]}, format="json").json()
    wide = client.post(URL, {"rules": [BLOCK_NOOP], "since": (timezone.now() - timedelta(days=11)).isoformat()},
                       format="json").json()
    # then only jobs created since then are evaluated
    assert (explicit["evaluated"], default["evaluated"], wide["evaluated"]) == (3, 3, 7)
    assert explicit["since"].startswith(since[:19])


def test_staff_only(make_principal: Any, api: APIClient) -> None:
    # given a non-staff principal with a token (the ``api`` fixture) and an anonymous client
    # when both ask for a what-if
    response = api.post(URL, {"rules": [BLOCK_NOOP]}, format="json")
    anonymous = APIClient().post(URL, {"rules": [BLOCK_NOOP]}, format="json")
    # then the principal is refused with 403 and the anonymous client with 401
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    ("rule", "error_key"),
    [
        ({"decision": "block", "conditions": [{"path": "amount", "op": "bigger", "value": 1}]}, "rules.0.conditions"),
        ({"decision": "block", "conditions": [{"path": "amount", "op": "in", "value": 3}]}, "rules.0.conditions"),
        ({"decision": "redact"}, "rules.0.redact_fields"),
        ({"decision": "block", "checkpoint": "before_commit"}, "rules.0.checkpoint"),
        ({"decision": "maybe"}, "rules.0.decision"),
        ({"decision": "block", "risk": "extreme"}, "rules.0.risk"),
        ({"decision": "block", "id": 3}, "rules.0"),
        ({"decision": "block", "conditions": '[{"path": "a"}]'}, "rules.0.conditions"),
        ({"decision": "block", "principal": 999999}, "rules.0.principal"),
        ({}, "rules.0.decision"),
    ],
)
def test_invalid_draft_is_refused_like_the_admin_form(make_principal: Any, rule: dict[str, Any],
                                                      error_key: str) -> None:
    # given a draft rule the admin's rule form would refuse
    client = staff_client(make_principal)
    # when it is simulated
    response = client.post(URL, {"rules": [rule]}, format="json")
    # then 400 with a stable code names the field
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "invalid_draft_rules"
    assert error_key in body["errors"], body


def test_malformed_body_is_invalid_request(make_principal: Any) -> None:
    client = staff_client(make_principal)
    assert client.post(URL, [BLOCK_NOOP], format="json").json()["code"] == "invalid_request"
    assert client.post(URL, {"rules": []}, format="json").json()["code"] == "invalid_request"
    bad_since = client.post(URL, {"rules": [BLOCK_NOOP], "since": "yesterday"}, format="json")
    assert bad_since.status_code == 400
    assert "since" in bad_since.json()["errors"]


def test_drafts_take_their_place_in_rule_order(make_principal: Any) -> None:
    # given an enabled allow rule for demo.noop at order 10, and noop jobs
    alice = make_principal("alice").user
    record_jobs(alice, "demo.noop", 3)
    PolicyRule.objects.create(order=10, name="noop ok", job_type="demo.noop", decision="allow")
    # when a block draft sorts after it, and when one sorts before it
    later = policy_simulate(draft_rules=draft_rules_validate(rules=[{**BLOCK_NOOP, "order": 20}]))
    earlier = policy_simulate(draft_rules=draft_rules_validate(rules=[{**BLOCK_NOOP, "order": 5}]))
    # then only the earlier one changes anything (first match by order wins)
    assert (later.evaluated, later.changed) == (3, 0)
    assert (earlier.evaluated, earlier.changed) == (3, 3)


def test_rules_with_drafts_orders_saved_drafts_by_id_and_new_ones_after() -> None:
    a = PolicyRule(pk=1, order=10, name="a", decision="allow")
    b = PolicyRule(pk=5, order=10, name="b", decision="allow")
    saved_draft = PolicyRule(pk=3, order=10, name="saved", decision="block")
    new_draft = PolicyRule(order=10, name="new", decision="block")
    early = PolicyRule(order=1, name="early", decision="block")
    merged = rules_with_drafts([a, b], [new_draft, saved_draft, early])
    assert [r.name for r in merged] == ["early", "a", "saved", "b", "new"]


def test_approvers_and_checkpoint_changes_count_under_the_same_action(make_principal: Any) -> None:
    # given high-risk jobs (default: require approval by 1 approver)
    alice = make_principal("alice").user
    record_jobs(alice, "demo.reviewed_store_write", 2, inputs={"key": "k", "data": {}})
    # when a draft asks for two approvers
    report = policy_simulate(draft_rules=draft_rules_validate(rules=[
        {"name": "two", "job_type": "demo.reviewed_*", "decision": "require_approval", "approvers": 2}]))
    # then they changed, under require_approval→require_approval
    assert report.changed == 2
    assert dict(report.transitions) == {"require_approval→require_approval": 2}


def test_group_scoped_draft_matches_members_only(make_principal: Any) -> None:
    # given alice in group "interns", bob not, both with noop jobs
    alice = make_principal("alice").user
    bob = make_principal("bob").user
    interns = Group.objects.create(name="interns")
    alice.groups.add(interns)
    record_jobs(alice, "demo.noop", 2)
    record_jobs(bob, "demo.noop", 3)
    # when a draft blocks the interns' jobs
    report = policy_simulate(draft_rules=draft_rules_validate(rules=[
        {"name": "interns", "group": interns.pk, "decision": "block"}]))
    # then only alice's jobs change
    assert (report.evaluated, report.changed) == (5, 2)
    assert report.by_principal["alice"].changed == 2
    assert report.by_principal["bob"].changed == 0


def test_redacted_fields_are_evaluated_as_stored(make_principal: Any) -> None:
    # given a job whose ssn was redacted at submit (stored as [REDACTED])
    alice = make_principal("alice").user
    record_jobs(alice, "demo.local_store_write", 1,
                inputs={"key": "k", "data": {}, "ssn": "[REDACTED]"})
    # when drafts test the redacted field's original value, and its presence
    on_value = policy_simulate(draft_rules=draft_rules_validate(rules=[
        {"name": "v", "decision": "block", "conditions": [{"path": "ssn", "op": "eq", "value": "123"}]}]))
    on_presence = policy_simulate(draft_rules=draft_rules_validate(rules=[
        {"name": "p", "decision": "block", "conditions": [{"path": "ssn", "op": "exists"}]}]))
    # then the value is no longer there to match; the field still exists
    assert on_value.changed == 0
    assert on_presence.changed == 1


def test_unregistered_job_types_are_skipped(make_principal: Any) -> None:
    alice = make_principal("alice").user
    record_jobs(alice, "demo.noop", 2)
    Job.objects.create(principal=alice, job_type="gone.type", scope="gone", session_id="s")
    report = policy_simulate(draft_rules=draft_rules_validate(rules=[BLOCK_NOOP]))
    assert (report.evaluated, report.skipped, report.changed) == (2, 1, 2)


def test_current_rules_reproduce_the_decision_recorded_at_submit(make_principal: Any) -> None:
    # given jobs submitted through job_submit under an enabled rule set (redact + approval)
    alice = make_principal("alice", grants=("demo:*", "store:write")).user
    PolicyRule.objects.create(order=1, name="strip", job_type="demo.local_store_*", decision="redact",
                              redact_fields=["data.note"])
    PolicyRule.objects.create(order=2, name="big", job_type="demo.local_store_write", decision="require_approval",
                              conditions=[{"path": "key", "op": "glob", "value": "big-*"}], approvers=2)
    specs = [
        SubmitSpec(job_type="demo.noop", inputs={}, session_id="s"),
        SubmitSpec(job_type="demo.local_store_write", inputs={"key": "small", "data": {"note": "x"}}, session_id="s"),
        SubmitSpec(job_type="demo.local_store_write", inputs={"key": "big-1", "data": {}}, session_id="s"),
        SubmitSpec(job_type="demo.reviewed_store_write", inputs={"key": "r", "data": {}}, session_id="s"),
    ]
    jobs = [job_submit(principal=alice, spec=spec).job for spec in specs]
    # when the what-if evaluates them with a draft that matches nothing
    records = {r.job_id: r for r in job_submission_records(since=timezone.now() - timedelta(hours=1))}
    report = policy_simulate(draft_rules=draft_rules_validate(rules=[
        {"name": "nothing", "job_type": "nothing.*", "decision": "block"}]))
    # then nothing changes, and the records carry what submit passed to the evaluator
    assert (report.evaluated, report.changed) == (4, 0)
    recorded = {j.pk: Job.objects.get(pk=j.pk).policy_decision["action"] for j in jobs}
    assert sorted(recorded.values()) == ["allow", "redact", "require_approval", "require_approval"]
    assert records[jobs[3].pk].ack == "before_commit"
    assert records[jobs[3].pk].has_commit is True
    assert records[jobs[0].pk].has_commit is False


def test_what_if_over_ten_thousand_recorded_jobs(make_principal: Any) -> None:
    # given 10,000 recorded jobs over three types and two principals, and one enabled rule
    alice = make_principal("alice").user
    bob = make_principal("bob").user
    PolicyRule.objects.create(order=50, name="store approval", scope="store", decision="require_approval",
                              conditions=[{"path": "data.amount", "op": "gte", "value": 100}])
    record_jobs(alice, "demo.noop", 4000)
    record_jobs(bob, "demo.noop", 1000)
    record_jobs(alice, "demo.local_store_write", 3000, inputs={"key": "k", "data": {"amount": 5}})
    record_jobs(bob, "demo.local_store_write", 1000, inputs={"key": "k", "data": {"amount": 500}})
    record_jobs(alice, "demo.reviewed_store_write", 1000, inputs={"key": "k", "data": {"amount": 1}})
    # when a draft blocks noop and another blocks store writes of 100 or more ahead of the rule
    report = policy_simulate(draft_rules=draft_rules_validate(rules=[
        BLOCK_NOOP,
        {"order": 10, "name": "no big writes", "scope": "store",
         "conditions": [{"path": "data.amount", "op": "gte", "value": 100}], "decision": "block"},
    ]))
    # then every job is evaluated and the counts are exact
    assert report.evaluated == 10_000
    assert report.changed == 6000
    assert dict(report.transitions) == {"allow→block": 5000, "require_approval→block": 1000}
    assert report.by_principal["bob"].changed == 2000
    assert report.by_job_type["demo.local_store_write"].changed == 1000
    assert report.by_job_type["demo.reviewed_store_write"].changed == 0


def test_draft_rules_validate_returns_unsaved_rules() -> None:
    drafts = draft_rules_validate(rules=[BLOCK_NOOP, {"decision": "allow"}])
    assert [d.pk for d in drafts] == [None, None]
    assert drafts[1].name == "draft 2"
    assert all(d.enabled for d in drafts)
    with pytest.raises(DraftRulesInvalid):
        draft_rules_validate(rules="block everything")


# --- admin --------------------------------------------------------------------------------------


def test_admin_simulate_action_on_draft_rules(make_principal: Any, client: Any) -> None:
    # given a staff superuser, a disabled (draft) block rule, an enabled rule and noop jobs
    admin_user = make_principal("root", grants=(), staff=True, superuser=True).user
    alice = make_principal("alice").user
    record_jobs(alice, "demo.noop", 4)
    draft = PolicyRule.objects.create(order=0, name="freeze noop", job_type="demo.noop", decision="block",
                                      enabled=False)
    live = PolicyRule.objects.create(order=5, name="live one", job_type="x.*", decision="allow")
    client.force_login(admin_user)
    before = table_counts()
    # when the simulate action runs on both
    response = client.post("/admin/governance/policyrule/",
                           {"action": "simulate_selected", "_selected_action": [draft.pk, live.pk]})
    # then the page shows the table for the draft, warns about the enabled one, and changes nothing
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="simulate-transitions"' in html
    assert "evaluated <strong>4</strong>" in html
    assert "changed <strong>4</strong>" in html
    assert "Already enabled" in html and "live one" in html
    assert table_counts() == before
    assert PolicyRule.objects.get(pk=draft.pk).enabled is False
    # and the page re-runs with another window
    again = client.post("/admin/governance/policyrule/",
                        {"action": "simulate_selected", "_selected_action": [draft.pk], "since_days": "1"})
    assert again.status_code == 200
    assert 'value="1"' in again.content.decode()
