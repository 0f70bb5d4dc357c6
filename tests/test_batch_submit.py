"""Batch submit (``POST /api/v1/jobs/batch``): each item decided as a single submit, written together."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from approvals.models import ApprovalRequest
from audit.models import AuditStamp
from audit.selectors import audit_verify
from jobs.hooks import approval_opening
from jobs.models import Job, JobStatus
from jobs.services.batch import jobs_submit_batch
from jobs.services.submit import SubmitSpec
from tests import harness
from tests.conftest import wait_status


def _batch(api: APIClient, jobs: list[Any]) -> Any:
    response = api.post("/api/v1/jobs/batch", {"jobs": jobs}, format="json")
    assert response.status_code == 200, response.content
    return response.json()["results"]


@pytest.fixture
def demo_principal(make_principal: Any) -> Any:
    """A principal holding ``demo:*`` only (an ``demo.http_call`` of its is blocked)."""
    return make_principal("batcher", grants=("demo:*",))


@pytest.fixture
def demo_api(demo_principal: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {demo_principal.token}")
    return client


def _noops(n: int, session: str = "s-batch") -> list[dict[str, Any]]:
    return [{"job_type": "demo.noop", "inputs": {"i": i}, "session_id": session} for i in range(n)]


MIXED = [
    {"job_type": "demo.noop", "inputs": {}, "session_id": "s-mix"},                                  # 0 accepted
    {"job_type": "no.such_type", "inputs": {}, "session_id": "s-mix"},                               # 1 unknown type
    {"job_type": "demo.long_running", "inputs": {"steps": "many"}, "session_id": "s-mix"},           # 2 bad inputs
    "not an object",                                                                                 # 3 not an object
    {"job_type": "demo.noop", "inputs": {}},                                                         # 4 no session
    {"job_type": "demo.http_call", "inputs": {"url": "http://127.0.0.1:9/"}, "session_id": "s-mix"},  # 5 blocked
    {"job_type": "demo.noop", "inputs": {"v": 1}, "session_id": "s-mix", "idempotency_key": "k-1"},  # 6 accepted
    {"job_type": "demo.noop", "inputs": {"v": 2}, "session_id": "s-mix", "idempotency_key": "k-1"},  # 7 conflict
    {"job_type": "demo.noop", "inputs": {"v": 1}, "session_id": "s-mix", "idempotency_key": "k-1"},  # 8 replay of 6
    {"job_type": "demo.noop", "inputs": {}, "session_id": "s-mix",
     "constraints": {"requires_human_ack": True}},                                                   # 9 pending
]


def _check_mixed(results: list[dict[str, Any]]) -> None:
    assert [r["index"] for r in results] == list(range(len(MIXED)))
    codes = [(r["code"], r.get("error"), r.get("status")) for r in results]
    assert codes == [
        (202, None, "queued"),
        (400, "unknown_job_type", None),
        (400, "invalid_inputs", None),
        (400, "invalid_request", None),
        (400, "invalid_request", None),
        (403, "permission_denied", "blocked"),
        (202, None, "queued"),
        (409, "idempotency_conflict", None),
        (200, None, "queued"),
        (202, None, "pending_approval"),
    ], codes
    # the bad ones answer as the single endpoint would
    assert results[2]["errors"] == {"steps": ["'many' is not of type 'integer'"]}
    assert "session_id" in results[4]["errors"]
    assert results[7]["job_id"] == results[6]["job_id"] == results[8]["job_id"]
    assert results[5]["reason"] == "missing permissions: net:call"
    assert results[0]["status_url"].endswith(f"/api/v1/jobs/{results[0]['job_id']}")
    assert results[0]["stream_url"].endswith(f"/api/v1/jobs/{results[0]['job_id']}/events")


def test_mixed_batch_answers_each_item_like_a_single_submit(demo_api: APIClient) -> None:
    # given a batch of good and bad items
    # when it is submitted
    results = _batch(demo_api, MIXED)
    # then every item has its own answer, in input order
    _check_mixed(results)
    # and exactly the accepted and blocked items were written, each with its creation stamp
    created = {results[i]["job_id"] for i in (0, 5, 6, 9)}
    assert set(Job.objects.values_list("pk", flat=True)) == created
    assert set(AuditStamp.objects.filter(seq=1).values_list("job_id", flat=True)) == created
    assert Job.objects.get(pk=results[5]["job_id"]).status == JobStatus.BLOCKED
    # the pending one has its approval request and stamp, as a single submit would
    pending = Job.objects.get(pk=results[9]["job_id"])
    assert pending.status == JobStatus.PENDING_APPROVAL
    assert ApprovalRequest.objects.filter(job=pending, status="pending").count() == 1
    assert list(AuditStamp.objects.filter(job_id=pending.pk).order_by("seq").values_list("event", flat=True)) == [
        "submitted", "approval_requested"]
    # and every chain verifies
    assert audit_verify().ok


def test_batch_matches_single_submits(api: APIClient) -> None:
    # given the same item submitted alone and in a batch
    item = {"job_type": "demo.local_store_write", "session_id": "s-same",
            "inputs": {"key": "k", "data": {"a": 1}, "api_token": "t0ken"}}
    single = api.post("/api/v1/jobs", item, format="json").json()
    batched = _batch(api, [item, item])[0]
    # then both jobs carry the same envelope, policy and stamp details (ids aside)
    one, two = Job.objects.get(pk=single["job_id"]), Job.objects.get(pk=batched["job_id"])
    for field in ("job_type", "scope", "permissions", "risk", "inputs", "constraints", "status", "stage",
                  "max_attempts", "max_runtime_s", "policy_decision", "request_hash"):
        assert getattr(one, field) == getattr(two, field), field
    assert two.secret_inputs and "t0ken" not in json.dumps(two.inputs)
    stamp_one = AuditStamp.objects.get(job_id=one.pk, seq=1)
    stamp_two = AuditStamp.objects.get(job_id=two.pk, seq=1)
    drop = {"trace_id"}
    assert {k: v for k, v in stamp_one.details.items() if k not in drop} == {
        k: v for k, v in stamp_two.details.items() if k not in drop}
    assert (stamp_one.event, stamp_one.actor) == (stamp_two.event, stamp_two.actor)


def test_batch_statements_do_not_grow_with_items(api: APIClient) -> None:
    # given batches of 10 and of 100 items (after one warm-up batch)
    _batch(api, _noops(3, "s-warm"))
    counts = {}
    for n in (10, 100):
        with CaptureQueriesContext(connection) as queries:
            results = _batch(api, _noops(n, f"s-{n}"))
        assert {r["code"] for r in results} == {202}
        counts[n] = len(queries)
    # then the statement count is the same constant for both
    assert counts[10] == counts[100], counts
    assert counts[100] <= 15, counts


def test_too_many_items_or_no_list_is_400(api: APIClient, settings: Any) -> None:
    settings.JOBS_BATCH_MAX = 5
    over = api.post("/api/v1/jobs/batch", {"jobs": _noops(6)}, format="json")
    assert over.status_code == 400 and over.json()["code"] == "invalid_request"
    bodies: list[Any] = [{"jobs": []}, {"jobs": "x"}, {}, [1]]
    for body in bodies:
        response = api.post("/api/v1/jobs/batch", body, format="json")
        assert response.status_code == 400 and response.json()["code"] == "invalid_request", body
    assert Job.objects.count() == 0


def test_a_failure_while_writing_writes_nothing(principal: Any) -> None:
    # given a batch whose last item needs approval, and a failure when its request opens
    def explode(**_: Any) -> None:
        raise RuntimeError("approval store down")

    specs = [SubmitSpec(job_type="demo.noop", inputs={"i": i}, session_id="s-fail") for i in range(5)]
    specs.append(SubmitSpec(job_type="demo.noop", inputs={}, session_id="s-fail",
                            constraints={"requires_human_ack": True}))
    approval_opening.connect(explode)
    try:
        # when the batch is submitted
        with pytest.raises(RuntimeError):
            jobs_submit_batch(principal=principal.user, specs=specs)
    finally:
        approval_opening.disconnect(explode)
    # then nothing of it was written
    assert Job.objects.count() == 0 and AuditStamp.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_with_the_same_keys_create_each_job_once(make_principal: Any) -> None:
    # given four clients sending the same keyed batch at the same instant
    principal = make_principal("racer")
    jobs = [{"job_type": "demo.noop", "inputs": {"i": i}, "session_id": "s-race", "idempotency_key": f"race-{i}"}
            for i in range(20)]

    def send(_: int) -> list[dict[str, Any]]:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {principal.token}")
        return _batch(client, jobs)

    answers = harness.race(4, send)
    # then every key made one job, and every client got that job for every item
    assert all(isinstance(a, list) for a in answers), answers
    assert Job.objects.filter(session_id="s-race").count() == 20
    for index in range(20):
        ids = {a[index]["job_id"] for a in answers}
        assert len(ids) == 1, (index, ids)
        assert sorted(a[index]["code"] for a in answers)[-1] in (200, 202)
    assert sum(1 for a in answers for r in a if r["code"] == 202) == 20


@pytest.mark.integration
def test_batch_over_http_runs_the_good_items(web: harness.WebServer, demo_principal: Any) -> None:
    # given a mixed batch sent to the real server
    headers = {"Authorization": f"Token {demo_principal.token}"}
    with httpx.Client(base_url=web.url, headers=headers, timeout=30) as client:
        response = client.post("/api/v1/jobs/batch", json={"jobs": MIXED})
    assert response.status_code == 200
    results = response.json()["results"]
    _check_mixed(results)
    # then the accepted ones run to the end, the others stay as answered
    for index in (0, 6):
        wait_status(results[index]["job_id"], JobStatus.SUCCEEDED)
    assert Job.objects.get(pk=results[9]["job_id"]).status == JobStatus.PENDING_APPROVAL
    assert Job.objects.get(pk=results[5]["job_id"]).status == JobStatus.BLOCKED
    assert Job.objects.filter(session_id="s-mix").count() == 4
