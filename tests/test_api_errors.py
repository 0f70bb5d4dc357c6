"""Bad input gets a specific error code and writes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from audit.models import AuditStamp
from jobs.models import Job

pytestmark = pytest.mark.django_db


def _nothing_written() -> None:
    assert Job.objects.count() == 0
    assert AuditStamp.objects.count() == 0


def test_unknown_job_type_is_400_unknown_job_type(submit: Any) -> None:
    response = submit("nope.nothing", {}, expect=400)
    assert response.json()["code"] == "unknown_job_type"
    _nothing_written()


def test_schema_failure_is_400_invalid_inputs_with_field_errors(submit: Any) -> None:
    response = submit("demo.long_running", {"steps": "many", "extra": 1}, expect=400)
    body = response.json()
    assert body["code"] == "invalid_inputs"
    assert "steps" in body["errors"] and "(root)" in body["errors"]
    _nothing_written()


def test_missing_fields_is_400_invalid_request(api: APIClient) -> None:
    response = api.post("/api/v1/jobs", {"inputs": {}}, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
    assert set(response.json()["errors"]) >= {"job_type", "session_id"}
    _nothing_written()


def test_malformed_json_is_400_malformed_json(api: APIClient) -> None:
    response = api.generic("POST", "/api/v1/jobs", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_json"
    _nothing_written()


def test_non_object_body_is_400(api: APIClient) -> None:
    response = api.post("/api/v1/jobs", [1, 2], format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


def test_body_over_1_mib_is_413(api: APIClient) -> None:
    big = {"job_type": "demo.noop", "session_id": "s", "inputs": {"blob": "x" * (1024 * 1024 + 10)}}
    response = api.post("/api/v1/jobs", big, format="json")
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    _nothing_written()


def test_no_token_is_401(db: None) -> None:
    response = APIClient().post("/api/v1/jobs", {"job_type": "demo.noop"}, format="json")
    assert response.status_code == 401
    assert response.json()["code"] in {"not_authenticated", "authentication_failed"}


def test_invalid_token_is_401(db: None) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = client.get("/api/v1/jobs")
    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"


def test_another_principals_job_is_404(submit: Any, make_principal: Any) -> None:
    # given a job of one principal
    job_id = submit("demo.noop", {}).json()["job_id"]
    other = make_principal("other-agent")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {other.token}")
    # then another principal cannot see it, its audit or its events
    for path in (f"/api/v1/jobs/{job_id}", f"/api/v1/jobs/{job_id}/audit", f"/api/v1/jobs/{job_id}/events"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["code"] == "not_found"
    assert client.get("/api/v1/jobs").json()["count"] == 0


def test_unknown_path_under_api_is_json_404(api: APIClient) -> None:
    response = api.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_list_filters_and_paginates(submit: Any, api: APIClient) -> None:
    for i in range(3):
        submit("demo.noop", {"i": i}, session_id="s-a")
    submit("demo.noop", {}, session_id="s-b")
    page = api.get("/api/v1/jobs?session_id=s-a&limit=2").json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    assert api.get("/api/v1/jobs?status=queued").json()["count"] == 4
    bad = api.get("/api/v1/jobs?status=weird")
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_request"


def test_invalid_constraints_and_priority(submit: Any) -> None:
    assert submit("demo.noop", {}, constraints={"bogus": 1}, expect=400).json()["code"] == "invalid_constraints"
    assert submit("demo.noop", {}, constraints={"max_runtime_s": 10**6}, expect=400).json()["code"] == (
        "invalid_constraints"
    )
    assert submit("demo.noop", {}, priority=1000, expect=400).json()["code"] == "out_of_range"
    _nothing_written()


def test_openapi_schema_and_docs(api: APIClient) -> None:
    schema = api.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/jobs" in schema.content
    assert api.get("/api/docs/").status_code == 200
