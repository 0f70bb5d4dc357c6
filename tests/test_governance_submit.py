"""Governance at submit, through the REST API (no broker needed: nothing is published in a
rolled-back test transaction)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.admin.utils import quote
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from audit.models import AuditStamp
from jobs.models import Job
from tests.factories import PolicyRuleFactory

SECRET = "sk-live-7f3c9a0e5b2d4411"


def client_for(principal: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {principal.token}")
    return client


def test_missing_grant_is_refused_403_and_recorded_blocked(make_principal: Any) -> None:
    # given a principal without store:write
    weak = make_principal("weak", grants=("demo:run",))
    # when it submits a store write
    response = client_for(weak).post(
        "/api/v1/jobs", {"job_type": "demo.local_store_write", "inputs": {"key": "k", "data": {}},
                         "session_id": "s1"}, format="json")
    # then it is refused with a stable code, and the attempt is recorded as a blocked job with a stamp
    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "permission_denied"
    assert body["status"] == "blocked"
    job = Job.objects.get(pk=body["job_id"])
    assert job.status == "blocked" and job.error_class == "policy_violation"
    stamp = AuditStamp.objects.get(job_id=job.id)
    assert (stamp.event, stamp.to_status) == ("blocked", "blocked")
    assert stamp.details["missing_permissions"] == ["store:write"]
    assert stamp.actor == "principal:weak"


def test_principal_in_body_is_refused_and_never_taken(make_principal: Any) -> None:
    # given two principals, the second with every grant
    agent = make_principal("agent1", grants=("demo:run",))
    boss = make_principal("boss", grants=("demo:*", "store:write"))
    # when agent1 submits a body claiming to be boss
    claimed = client_for(agent).post(
        "/api/v1/jobs",
        {"job_type": "demo.noop", "inputs": {}, "session_id": "s1", "requested_by": "boss",
         "principal": boss.user.pk, "principal_id": boss.user.pk},
        format="json",
    )
    # then the body is refused as a whole (fields it does not define), and nothing is written
    assert (claimed.status_code, claimed.json()["code"]) == (400, "unknown_field")
    assert set(claimed.json()["errors"]) == {"requested_by", "principal", "principal_id"}
    assert not Job.objects.exists()
    # and the job it submits without them belongs to the authenticated principal only
    response = client_for(agent).post(
        "/api/v1/jobs", {"job_type": "demo.noop", "inputs": {}, "session_id": "s1"}, format="json",
    )
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["job_id"])
    assert job.principal_id == agent.user.pk
    assert AuditStamp.objects.get(job_id=job.id).actor == "principal:agent1"
    # and boss cannot see it (404, not 403)
    assert client_for(boss).get(f"/api/v1/jobs/{job.id}").status_code == 404


def test_unauthenticated_submit_is_refused(db: None) -> None:
    response = APIClient().post("/api/v1/jobs", {"job_type": "demo.noop", "inputs": {}, "session_id": "s"},
                                format="json")
    assert response.status_code in (401, 403)
    assert not Job.objects.exists()


def test_policy_block_records_rule_and_version(make_principal: Any) -> None:
    # given a rule blocking large writes to the store
    agent = make_principal("agent2")
    rule = PolicyRuleFactory.create(
        order=1, name="no big writes", job_type="demo.local_store_*", decision="block", reason="too big",
        conditions=[{"path": "data.size", "op": "gt", "value": 100}],
    )
    # when a small and a large write are submitted
    ok = client_for(agent).post("/api/v1/jobs", {"job_type": "demo.local_store_write",
                                "inputs": {"key": "a", "data": {"size": 1}}, "session_id": "s"}, format="json")
    big = client_for(agent).post("/api/v1/jobs", {"job_type": "demo.local_store_write",
                                 "inputs": {"key": "b", "data": {"size": 1000}}, "session_id": "s"}, format="json")
    # then only the large one is blocked, with the rule and policy version in the job and its stamp
    assert ok.status_code == 202
    assert big.status_code == 403 and big.json()["code"] == "policy_blocked"
    job = Job.objects.get(pk=big.json()["job_id"])
    assert job.policy_decision["rule_id"] == rule.pk
    stamp = AuditStamp.objects.get(job_id=job.id)
    assert stamp.details["policy"]["rule_id"] == rule.pk
    assert stamp.details["policy"]["policy_version"] == job.policy_decision["policy_version"]
    assert stamp.details["policy"]["path"] == [f"rule:{rule.pk}:no big writes:block"]


def test_redact_replaces_fields_before_storage_and_stamps_which(make_principal: Any) -> None:
    # given a rule redacting a personal field
    agent = make_principal("agent3")
    PolicyRuleFactory.create(order=1, name="strip ssn", job_type="demo.*", decision="redact",
                             redact_fields=["data.ssn", "data.absent"])
    # when a job carrying it is submitted
    response = client_for(agent).post(
        "/api/v1/jobs", {"job_type": "demo.local_store_write",
                         "inputs": {"key": "p", "data": {"ssn": "078-05-1120", "name": "x"}}, "session_id": "s"},
        format="json")
    # then the stored inputs hold the placeholder, the stamp lists the field, and the value is nowhere
    assert response.status_code == 202
    job = Job.objects.get(pk=response.json()["job_id"])
    assert job.inputs["data"] == {"ssn": "[REDACTED]", "name": "x"}
    stamp = AuditStamp.objects.get(job_id=job.id)
    assert stamp.details["redacted_fields"] == ["data.ssn"]
    assert stamp.details["policy"]["action"] == "redact"
    assert "078-05-1120" not in json.dumps(client_for(agent).get(f"/api/v1/jobs/{job.id}").json())


def test_secret_is_stored_encrypted_and_shown_nowhere(make_principal: Any) -> None:
    # given a job submitted with a secret input field
    agent = make_principal("agent4")
    api = client_for(agent)
    response = api.post("/api/v1/jobs", {"job_type": "demo.local_store_write",
                        "inputs": {"key": "s", "data": {}, "api_token": SECRET}, "session_id": "sec"},
                        format="json")
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    # then no API response carries it
    for url in (f"/api/v1/jobs/{job_id}", "/api/v1/jobs?session_id=sec", f"/api/v1/jobs/{job_id}/audit"):
        page = api.get(url)
        assert page.status_code == 200
        assert SECRET not in page.content.decode(), url
    assert "api_token" not in api.get(f"/api/v1/jobs/{job_id}").json()["inputs"]
    # nor the admin (change page and changelist), for a superuser
    ops = make_principal("ops", grants=(), staff=True, superuser=True, password="pw-ops-1")
    admin = Client()
    admin.force_login(ops.user)
    # (admin URLs quote the pk: a job id may contain "_3F", which the admin would read as "?")
    for url in (f"/admin/jobs/job/{quote(job_id)}/change/", "/admin/jobs/job/", "/admin/audit/auditstamp/"):
        admin_page = admin.get(url)
        assert admin_page.status_code == 200, url
        assert SECRET not in admin_page.content.decode(), url
    # nor any stamp, nor the database row in clear (it decrypts to the value only in the worker)
    assert not AuditStamp.objects.filter(details__icontains=SECRET).exists()
    stamp = AuditStamp.objects.get(job_id=job_id)
    assert stamp.details["secret_fields"] == ["api_token"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT row_to_json(j)::text FROM jobs_job j WHERE id = %s", [job_id])
        row = cursor.fetchone()[0]
    assert SECRET not in row
    assert Job.objects.get(pk=job_id).secret_inputs.startswith("gAAAA")  # a Fernet token
