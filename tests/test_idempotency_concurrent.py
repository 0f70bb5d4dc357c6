"""Idempotency keys (one job per principal and key, even under concurrent submits) and the
effect ledger (a commit re-run after its effect was recorded writes nothing again)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import AuditStamp
from common.errors import DomainError
from examples.models import ExternalRecord
from jobs.models import EffectRecord, Job, JobRun, JobStatus
from jobs.services.submit import SubmitSpec, job_submit
from jobs.worker.runner import stage_run
from tests.factories import admit, advance
from tests.harness import race

# A far run_after keeps the dispatcher from publishing anything: these tests need no broker.
LATER = (timezone.now() + timedelta(days=1)).isoformat()


def _post(principal: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {principal.token}")
    response = client.post("/api/v1/jobs", body, format="json")
    return response.status_code, response.json()


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicate_submits_over_the_api_create_one_job(principal: Any) -> None:
    # given one body with an idempotency key
    body = {"job_type": "demo.noop", "inputs": {"n": 1}, "session_id": "s-idem", "idempotency_key": "k-race",
            "run_after": LATER}
    # when eight clients post it at the same instant
    results = race(8, lambda i: _post(principal, body))
    # then exactly one got 202, the others 200 with the same body, and one job exists
    assert all(isinstance(r, tuple) for r in results), results
    codes = sorted(code for code, _ in results)
    assert codes == [200] * 7 + [202], results
    bodies = {tuple(sorted(b.items())) for _, b in results}
    assert len(bodies) == 1, bodies
    assert Job.objects.filter(idempotency_key="k-race").count() == 1
    job = Job.objects.get(idempotency_key="k-race")
    assert AuditStamp.objects.filter(job_id=job.id, event="submitted").count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_submits_with_one_key_and_two_payloads_one_wins_the_rest_conflict(principal: Any) -> None:
    # given two different payloads under the same key
    later = timezone.now() + timedelta(days=1)

    def spec(i: int) -> SubmitSpec:
        return SubmitSpec(job_type="demo.noop", inputs={"variant": i % 2}, session_id="s-idem",
                          idempotency_key="k-two", run_after=later)

    # when eight submits race, four of each payload
    results = race(8, lambda i: job_submit(principal=principal.user, spec=spec(i)))
    # then one job exists; every submit of its payload returned it, every other one got 409
    job = Job.objects.get(idempotency_key="k-two")
    winner = job.inputs["variant"]
    for i, result in enumerate(results):
        if i % 2 == winner:
            assert not isinstance(result, Exception), result
            assert result.job.id == job.id
        else:
            assert isinstance(result, DomainError) and result.code == "idempotency_conflict", result
            assert result.status == 409 and result.extra["job_id"] == job.id
    assert sum(1 for r in results if not isinstance(r, Exception) and r.created) == 1


@pytest.mark.django_db
def test_replay_answers_the_first_body_even_after_the_job_moved_on(principal: Any, api: APIClient) -> None:
    # given a submitted job whose status has since changed
    body = {"job_type": "demo.noop", "inputs": {}, "session_id": "s-idem", "idempotency_key": "k-replay",
            "run_after": LATER}
    first = api.post("/api/v1/jobs", body, format="json")
    assert first.status_code == 202
    # (retried: its second run has an id of its own, not the one answered at submit)
    advance(first.json()["job_id"], JobStatus.RUNNING, JobStatus.RETRY_SCHEDULED, JobStatus.QUEUED,
            JobStatus.RUNNING, JobStatus.SUCCEEDED)
    # when the same request is sent again, and then with another payload
    again = api.post("/api/v1/jobs", body, format="json")
    other = api.post("/api/v1/jobs", {**body, "inputs": {"x": 1}}, format="json")
    # then the replay is 200 with the first answer's body, the other payload 409
    assert again.status_code == 200 and again.json() == first.json()
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_conflict" and other.json()["job_id"] == first.json()["job_id"]


@pytest.mark.django_db
def test_keys_are_per_principal(make_principal: Any) -> None:
    # given two principals using the same key
    alice, bob = make_principal("alice"), make_principal("bob")
    body = {"job_type": "demo.noop", "inputs": {}, "session_id": "s", "idempotency_key": "shared", "run_after": LATER}
    # when each submits
    codes = [_post(p, body)[0] for p in (alice, bob)]
    # then each gets a job of their own
    assert codes == [202, 202]
    assert Job.objects.filter(idempotency_key="shared").count() == 2


# --- the effect ledger ------------------------------------------------------------------------


@pytest.mark.django_db
def test_commit_rerun_after_its_effect_was_recorded_writes_nothing_again(principal: Any) -> None:
    # given a two-stage job whose finalize has run and recorded its effect
    job = job_submit(principal=principal.user, spec=SubmitSpec(
        job_type="demo.local_store_write", inputs={"key": "k-ledger", "data": {"v": 1}}, session_id="s")).job

    def run_stage() -> Any:
        token = admit(job)
        return stage_run(job_id=job.id, stage=Job.objects.get(pk=job.id).stage, token=token, worker="w")

    assert run_stage().outcome == "advanced"
    assert run_stage().outcome == "succeeded"
    first_result = Job.objects.get(pk=job.id).result
    # when the finalize stage runs again (as after a lost acknowledgement or a reaped lease): the
    # job is wound back by hand to the moment before its finalize finished, a state no legal
    # transition leads to from succeeded
    Job.objects.filter(pk=job.id).update(status=JobStatus.QUEUED, stage="finalize", attempts=0, claims=0)
    outcome = run_stage()
    # then it succeeds with the recorded result and the store still holds one record
    assert outcome.outcome == "succeeded"
    assert Job.objects.get(pk=job.id).result == first_result
    assert ExternalRecord.objects.filter(key="k-ledger").count() == 1
    assert EffectRecord.objects.filter(job_type="demo.local_store_write", effect_key=job.id).count() == 1
    assert AuditStamp.objects.filter(job_id=job.id, event="effect_replayed").count() == 1
    assert JobRun.objects.filter(job_id=job.id, stage="finalize").count() == 2
