"""Hostile input: every reproduction of the attack report answers a specific 4xx and writes nothing.

Each test is one reproduction (issue "Hostile input and exhaustion"): before the fixes they
answered 500 (PostgreSQL DataError, RecursionError, UnicodeEncodeError, bigint out of range),
accepted what they should not, or leaked.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from approvals.models import ApprovalRequest
from audit.models import AuditStamp
from jobs.models import Job, JobStatus, PrincipalControl, SessionControl

pytestmark = pytest.mark.django_db


def _nothing_written() -> None:
    assert Job.objects.count() == 0
    assert AuditStamp.objects.count() == 0


def _client(who: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {who.token}")
    return client


def _submit_body(**extra: Any) -> dict[str, Any]:
    return {"job_type": "demo.noop", "inputs": {}, "session_id": "s-hostile", **extra}


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.fixture
def reviewer(make_principal: Any) -> APIClient:
    return _client(make_principal("reviewer", ("approve:*",)))


@pytest.fixture
def pending(api: APIClient) -> ApprovalRequest:
    """A job of the ``api`` principal waiting for review before it runs."""
    response = api.post("/api/v1/jobs", _submit_body(constraints={"requires_human_ack": True}), format="json")
    assert response.status_code == 202, response.content
    return ApprovalRequest.objects.get(job_id=response.json()["job_id"], status="pending")


# --- the 500s -------------------------------------------------------------------------------


@pytest.mark.parametrize("inputs", [{"x": "a\u0000"}, {"a\u0000": 1}, {"deep": [{"x": "\u0000"}]}])
def test_nul_in_inputs_value_or_key_is_400_invalid_characters(api: APIClient, inputs: dict[str, Any]) -> None:
    response = api.post("/api/v1/jobs", _submit_body(inputs=inputs), format="json")
    assert (response.status_code, response.json()["code"]) == (400, "invalid_characters")
    _nothing_written()


def test_nul_in_a_query_parameter_is_400(api: APIClient) -> None:
    for path in ("/api/v1/jobs?session_id=a%00b", "/api/v1/jobs?a%00=1", "/api/v1/approvals?status=a%00"):
        response = api.get(path)
        assert (response.status_code, response.json()["code"]) == (400, "invalid_characters"), path


@pytest.mark.parametrize("method,path", [
    ("get", "/api/v1/jobs/job_a%00b"),
    ("get", "/api/v1/jobs/job_a%00b/audit"),
    ("get", "/api/v1/jobs/job_a%00b/events"),
    ("post", "/api/v1/jobs/job_a%00b/cancel"),
    ("post", "/api/v1/jobs/job_a%00b/replay"),
    ("get", "/api/v1/sessions/a%00b"),
    ("post", "/api/v1/sessions/a%00b/pause"),
    ("post", "/api/v1/sessions/a%00b/resume"),
    ("get", "/api/v1/approvals/apr_a%00b"),
    ("post", "/api/v1/approvals/apr_a%00b/approve"),
])
def test_nul_in_a_path_is_a_4xx_never_500(api: APIClient, method: str, path: str) -> None:
    response = getattr(api, method)(path)
    assert response.status_code in (400, 404), (path, response.status_code)
    assert response.json()["code"] in ("invalid_characters", "not_found")
    assert not SessionControl.objects.exists()


def test_nul_in_an_approvers_modified_inputs_is_400(reviewer: APIClient, pending: ApprovalRequest) -> None:
    response = reviewer.post(f"/api/v1/approvals/{pending.public_id}/approve",
                             {"inputs": {"x": "a\u0000b"}}, format="json")
    assert (response.status_code, response.json()["code"]) == (400, "invalid_characters")
    pending.refresh_from_db()
    assert pending.status == "pending" and not pending.decisions.exists()


def test_json_nested_1000_deep_is_400_too_deep(api: APIClient, reviewer: APIClient,
                                               pending: ApprovalRequest) -> None:
    jobs_before, stamps_before = Job.objects.count(), AuditStamp.objects.count()
    # ~1,000 levels (within the decoder's stack) and 100,000 (beyond it), in inputs and an approve body
    for levels in (1000, 100_000):
        deep = '{"a":' * levels + "1" + "}" * levels
        raw = '{"job_type": "demo.noop", "session_id": "s", "inputs": ' + deep + "}"
        response = api.generic("POST", "/api/v1/jobs", raw, content_type="application/json")
        assert (response.status_code, response.json()["code"]) == (400, "too_deep"), levels
        approve = reviewer.generic("POST", f"/api/v1/approvals/{pending.public_id}/approve",
                                   '{"inputs": ' + deep + "}", content_type="application/json")
        assert (approve.status_code, approve.json()["code"]) == (400, "too_deep"), levels
    arrays = '{"job_type": "demo.noop", "session_id": "s", "inputs": {"x": ' + "[" * 1000 + "]" * 1000 + "}}"
    response = api.generic("POST", "/api/v1/jobs", arrays, content_type="application/json")
    assert (response.status_code, response.json()["code"]) == (400, "too_deep")
    assert (Job.objects.count(), AuditStamp.objects.count()) == (jobs_before, stamps_before)


def test_json_within_the_depth_limit_is_accepted(api: APIClient) -> None:
    response = api.post("/api/v1/jobs", _submit_body(inputs=_nested(25)), format="json")
    assert response.status_code == 202, response.content


def test_lone_surrogate_in_inputs_is_400(api: APIClient) -> None:
    for raw in ('{"job_type": "demo.noop", "session_id": "s", "inputs": {"x": "\\ud800"}}',
                '{"job_type": "demo.noop", "session_id": "s", "inputs": {"\\udfff": 1}}',
                '{"job_type": "demo.noop", "session_id": "s\\ud800", "inputs": {}}'):
        response = api.generic("POST", "/api/v1/jobs", raw, content_type="application/json")
        assert (response.status_code, response.json()["code"]) == (400, "invalid_characters"), raw
    _nothing_written()


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/approvals"])
@pytest.mark.parametrize("query", ["limit=99999999999999999999", "offset=99999999999999999999",
                                   "limit=-1", "limit=0", "offset=-5"])
def test_integer_parameters_out_of_bounds_are_400(api: APIClient, path: str, query: str) -> None:
    response = api.get(f"{path}?{query}")
    assert (response.status_code, response.json()["code"]) == (400, "out_of_range"), query


@pytest.mark.parametrize("query", ["limit=abc", "limit=1.5", "offset=1e3"])
def test_non_integer_page_parameters_are_400_invalid_type(api: APIClient, query: str) -> None:
    response = api.get(f"/api/v1/jobs?{query}")
    assert (response.status_code, response.json()["code"]) == (400, "invalid_type"), query


def test_event_stream_resume_point_out_of_bounds_is_400(api: APIClient) -> None:
    job_id = api.post("/api/v1/jobs", _submit_body(), format="json").json()["job_id"]
    response = api.get(f"/api/v1/jobs/{job_id}/events?after=99999999999999999999")
    assert (response.status_code, response.json()["code"]) == (400, "out_of_range")
    response = api.get(f"/api/v1/jobs/{job_id}/events", HTTP_LAST_EVENT_ID="x")
    assert (response.status_code, response.json()["code"]) == (400, "invalid_type")
    assert response["Content-Type"] == "application/json"


# --- unbounded pages -------------------------------------------------------------------------


def test_pages_default_to_50_and_refuse_more_than_500(api: APIClient) -> None:
    for i in range(55):
        assert api.post("/api/v1/jobs", _submit_body(inputs={"i": i}), format="json").status_code == 202
    page = api.get("/api/v1/jobs").json()
    assert (page["count"], len(page["results"])) == (55, 50)
    assert len(api.get("/api/v1/jobs?limit=500").json()["results"]) == 55
    response = api.get("/api/v1/jobs?limit=100000")
    assert (response.status_code, response.json()["code"]) == (400, "out_of_range")
    assert response.json()["errors"] == {"limit": ["must be between 1 and 500"]}


# --- accepted but should not be -------------------------------------------------------------


@pytest.mark.parametrize("field", ["principal", "status", "id", "requested_by"])
def test_unknown_top_level_submit_field_is_400_unknown_field(api: APIClient, field: str) -> None:
    response = api.post("/api/v1/jobs", _submit_body(**{field: "x"}), format="json")
    assert (response.status_code, response.json()["code"]) == (400, "unknown_field")
    assert response.json()["errors"] == {field: ["unknown field"]}
    _nothing_written()


def test_unknown_fields_in_approve_and_deny_bodies_are_400(reviewer: APIClient, pending: ApprovalRequest) -> None:
    for action in ("approve", "deny"):
        response = reviewer.post(f"/api/v1/approvals/{pending.public_id}/{action}",
                                 {"comment": "ok", "approver": "someone-else"}, format="json")
        assert (response.status_code, response.json()["code"]) == (400, "unknown_field"), action
    pending.refresh_from_db()
    assert pending.status == "pending" and not pending.decisions.exists()


@pytest.mark.parametrize("extra", [{"priority": "5"}, {"priority": 5.0}, {"priority": True},
                                   {"session_id": 5}, {"job_type": ["demo.noop"]}, {"inputs": {}, "constraints": []},
                                   {"idempotency_key": 7}, {"run_after": 1700000000}])
def test_wrong_json_types_are_400_invalid_type_not_coerced(api: APIClient, extra: dict[str, Any]) -> None:
    response = api.post("/api/v1/jobs", _submit_body(**extra), format="json")
    assert (response.status_code, response.json()["code"]) == (400, "invalid_type"), extra
    _nothing_written()


@pytest.mark.parametrize("run_after", ["9999-12-31T00:00:00Z", "0001-01-01T00:00:00Z", "2000-01-01T00:00:00Z"])
def test_run_after_outside_its_horizon_is_400_out_of_range(api: APIClient, run_after: str) -> None:
    response = api.post("/api/v1/jobs", _submit_body(run_after=run_after), format="json")
    assert (response.status_code, response.json()["code"]) == (400, "out_of_range")
    assert "run_after" in response.json()["errors"]
    _nothing_written()


def test_run_after_within_its_horizon_is_accepted(api: APIClient) -> None:
    from datetime import timedelta

    from django.utils import timezone

    soon = (timezone.now() + timedelta(days=29)).isoformat()
    assert api.post("/api/v1/jobs", _submit_body(run_after=soon), format="json").status_code == 202


@pytest.mark.parametrize("session_id", ["a\r\nb", "a\x1b[31mred", "tab\there", "rtl\u202eevil", "nul\x00"])
def test_control_characters_in_session_id_are_refused(api: APIClient, session_id: str) -> None:
    response = api.post("/api/v1/jobs", _submit_body(session_id=session_id), format="json")
    assert (response.status_code, response.json()["code"]) == (400, "invalid_characters")
    _nothing_written()


def test_text_values_keep_tabs_and_newlines_but_not_escape_codes(api: APIClient) -> None:
    ok = api.post("/api/v1/jobs", _submit_body(inputs={"text": "line 1\n\tline 2\r\n"}), format="json")
    assert ok.status_code == 202, ok.content
    bad = api.post("/api/v1/jobs", _submit_body(inputs={"text": "\x1b[2J"}), format="json")
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_characters")


def test_overlong_session_path_parameter_is_400_and_stores_nothing(api: APIClient) -> None:
    response = api.post(f"/api/v1/sessions/{'s' * 200}/pause")
    assert (response.status_code, response.json()["code"]) == (400, "out_of_range")
    assert not SessionControl.objects.exists() and not PrincipalControl.objects.exists()


def test_non_finite_numbers_are_refused(api: APIClient) -> None:
    for raw in ('{"job_type": "demo.noop", "session_id": "s", "inputs": {"x": 1e400}}',
                '{"job_type": "demo.noop", "session_id": "s", "inputs": {"x": NaN}}'):
        response = api.generic("POST", "/api/v1/jobs", raw, content_type="application/json")
        assert response.status_code == 400, raw
        assert response.json()["code"] in ("invalid_type", "malformed_json")
    _nothing_written()


# --- the schema -----------------------------------------------------------------------------


def test_unknown_format_is_406_not_acceptable_with_the_error_body(api: APIClient) -> None:
    for path in ("/api/v1/jobs?format=xml", "/api/v1/approvals?format=bogus"):
        response = api.get(path)
        assert response.status_code == 406, path
        assert response.json()["code"] == "not_acceptable"


def test_every_operation_documents_its_errors_with_one_error_body(api: APIClient) -> None:
    schema = api.get("/api/schema/?format=json").json()
    error_ref = "#/components/schemas/Error"
    assert set(schema["components"]["schemas"]["Error"]["required"]) == {"code", "detail"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            errors = {code: r for code, r in responses.items() if code.startswith(("4", "5"))}
            assert {"400", "401", "406", "503"} <= set(errors), (method, path, sorted(responses))
            if "{" in path:
                assert "404" in errors, (method, path)
            assert errors["414"]["content"] == {"text/html": {"schema": {"type": "string"}}}  # the web server's
            for code, response in errors.items():
                if code == "414":
                    continue
                body = response["content"]["application/json"]["schema"]
                if not (path == "/api/v1/jobs" and code == "403"):
                    assert body == {"$ref": error_ref}, (method, path, code)
    audit = schema["paths"]["/api/v1/jobs/{job_id}/audit"]["get"]["responses"]["200"]["content"]
    audit_schema = schema["components"]["schemas"][audit["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert set(audit_schema["properties"]) == {"job_id", "stamps"}
    events = schema["paths"]["/api/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]
    submit = schema["paths"]["/api/v1/jobs"]["post"]["responses"]
    assert {"200", "202", "403", "409", "429"} <= set(submit)


# --- exhaustion: the submit rate ------------------------------------------------------------


@pytest.mark.parametrize("backend", ["redis", "locmem"])
def test_submits_over_the_rate_are_429_with_retry_after(api: APIClient, make_principal: Any, backend: str) -> None:
    # a cache of this test's own (a fresh key prefix on the broker's Redis, or local memory)
    from django.conf import settings

    if backend == "redis":
        cache = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": settings.CELERY_BROKER_URL,
                 "KEY_PREFIX": f"test-throttle-{uuid.uuid4().hex}"}
    else:
        cache = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": uuid.uuid4().hex}
    with override_settings(API_SUBMIT_RATE="3/min", CACHES={"default": cache}):
        answers = [api.post("/api/v1/jobs", _submit_body(inputs={"i": i}), format="json") for i in range(5)]
        assert [a.status_code for a in answers] == [202, 202, 202, 429, 429]
        refused = answers[3]
        assert refused.json()["code"] == "throttled"
        assert 1 <= int(refused["Retry-After"]) <= 60
        assert refused.json()["retry_after"] == int(refused["Retry-After"])
        # reading is not limited, and another principal has a budget of its own
        assert api.get("/api/v1/jobs").status_code == 200
        other = _client(make_principal("other-agent"))
        assert other.post("/api/v1/jobs", _submit_body(), format="json").status_code == 202
    assert Job.objects.count() == 4
    assert not Job.objects.exclude(status=JobStatus.QUEUED).exists()


def test_the_submit_rate_is_off_when_the_cache_does_not_answer(api: APIClient) -> None:
    # a Redis nobody listens on: submits go on (jobs wait in the database), unthrottled
    from tests.harness import free_port

    dead = {"BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2}}
    with override_settings(API_SUBMIT_RATE="1/min", CACHES={"default": dead}):
        assert [api.post("/api/v1/jobs", _submit_body(inputs={"i": i}), format="json").status_code
                for i in range(2)] == [202, 202]


def test_nul_in_an_admin_path_is_400_not_500(make_principal: Any) -> None:
    from django.contrib.auth.models import User
    from django.test import Client

    make_principal("admin-nul", (), staff=True)
    user = User.objects.get(username="admin-nul")
    user.is_superuser = True
    user.save()
    client = Client()
    client.force_login(user)
    for path in ("/admin/jobs/job/job_a%00b/change/", "/admin/approvals/approvalrequest/1%00/change/"):
        assert client.get(path).status_code == 400, path
