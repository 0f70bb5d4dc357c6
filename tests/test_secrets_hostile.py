"""Secrets: the idempotency hash confirms no guessed secret, a schema error does not echo a secret
value, and masking leaves non-secret values alone."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from audit.models import AuditStamp
from audit.services import canonical_json
from examples.job_types import LocalStoreWrite
from jobs.models import Job
from jobs.worker.outcomes import scrub_secrets

pytestmark = pytest.mark.django_db


def _submit_body(**extra: Any) -> dict[str, Any]:
    return {"job_type": "demo.noop", "inputs": {}, "session_id": "s-hostile", **extra}


def _nothing_written() -> None:
    assert Job.objects.count() == 0
    assert AuditStamp.objects.count() == 0


def test_request_hash_is_keyed_and_idempotency_still_holds(api: APIClient) -> None:
    inputs: dict[str, Any] = {"key": "k", "data": {}, "api_token": "guessable"}
    body: dict[str, Any] = {"job_type": "demo.local_store_write", "session_id": "s", "idempotency_key": "k1",
                            "inputs": inputs}
    first = api.post("/api/v1/jobs", body, format="json")
    assert first.status_code == 202, first.content
    job = Job.objects.get(pk=first.json()["job_id"])
    # the stored hash is not the plain SHA-256 anyone could recompute from a guessed secret
    plain = {"job_type": body["job_type"], "inputs": body["inputs"], "session_id": "s", "priority": 0,
             "run_after": None, "constraints": {}, "callback_url": ""}
    assert job.request_hash != hashlib.sha256(canonical_json(plain).encode()).hexdigest()
    with override_settings(JOBS_REQUEST_HASH_KEY="another-key"):
        from jobs.services.submit import SubmitSpec, _request_hashes

        spec = SubmitSpec(job_type="demo.local_store_write", inputs=inputs, session_id="s")
        assert _request_hashes(spec)[0] != job.request_hash
    # same key + same payload -> the same job; other payload (another secret) -> 409
    again = api.post("/api/v1/jobs", body, format="json")
    assert (again.status_code, again.json()["job_id"]) == (200, job.id)
    other = api.post("/api/v1/jobs", {**body, "inputs": {**inputs, "api_token": "other"}}, format="json")
    assert (other.status_code, other.json()["code"]) == (409, "idempotency_conflict")


def test_a_job_stored_with_the_old_plain_hash_still_answers_its_repeat(api: APIClient) -> None:
    from governance.secrets import request_hmac

    body = _submit_body(idempotency_key="old-key")
    job_id = api.post("/api/v1/jobs", body, format="json").json()["job_id"]
    plain = {"job_type": "demo.noop", "inputs": {}, "session_id": "s-hostile", "priority": 0,
             "run_after": None, "constraints": {}, "callback_url": ""}
    old = hashlib.sha256(canonical_json(plain).encode()).hexdigest()
    # as migration jobs 0004 rewrapped it
    Job.objects.filter(pk=job_id).update(request_hash=request_hmac(b"legacy:" + old.encode()))
    assert api.post("/api/v1/jobs", body, format="json").status_code == 200
    assert api.post("/api/v1/jobs", {**body, "priority": 3}, format="json").status_code == 409


def test_schema_error_on_a_secret_field_does_not_echo_its_value(api: APIClient) -> None:
    body = {"job_type": "demo.local_store_write", "session_id": "s",
            "inputs": {"key": "k", "data": {}, "api_token": ["sk-live-0123456789abcdef"]}}
    response = api.post("/api/v1/jobs", body, format="json")
    assert (response.status_code, response.json()["code"]) == (400, "invalid_inputs")
    assert "sk-live-0123456789abcdef" not in response.content.decode()
    assert "api_token" in response.json()["errors"]
    _nothing_written()


def test_masking_leaves_non_secret_values_that_equal_a_secret() -> None:
    from governance.secrets import encrypt_secrets

    job = Job(inputs={"key": "k", "data": {"echo": "abc"}}, secret_inputs=encrypt_secrets({"api_token": "abc"}))
    proposal = {"key": "k", "data": {"echo": "abc"}, "note": "token abc"}
    # the submitter's own public value is kept as it is (it is stored and shown anyway)
    assert scrub_secrets(job, LocalStoreWrite(), proposal)["data"] == {"echo": "abc"}
    # while a secret that is nowhere public is still masked wherever it is echoed
    job = Job(inputs={"key": "k", "data": {}}, secret_inputs=encrypt_secrets({"api_token": "tok-abcdef-123"}))
    out = scrub_secrets(job, LocalStoreWrite(), {"msg": "bad token tok-abcdef-123", "v": "tok-abcdef-123"})
    assert out == {"msg": "bad token [SECRET]", "v": "[SECRET]"}
