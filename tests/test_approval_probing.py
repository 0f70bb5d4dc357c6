"""Approval state is not probeable: ids are unguessable, and deciding a request the caller may
neither see nor decide answers 404 whatever its state (before: sequential ids, and 404 / 409
"already approved" / 403 naming the needed grant)."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from approvals.models import ApprovalRequest

pytestmark = pytest.mark.django_db


def _client(who: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {who.token}")
    return client


@pytest.fixture
def reviewer(make_principal: Any) -> APIClient:
    return _client(make_principal("reviewer", ("approve:*",)))


@pytest.fixture
def pending(api: APIClient) -> ApprovalRequest:
    """A job of the ``api`` principal waiting for review before it runs."""
    body = {"job_type": "demo.noop", "inputs": {}, "session_id": "s-probe", "constraints": {"requires_human_ack": True}}
    response = api.post("/api/v1/jobs", body, format="json")
    assert response.status_code == 202, response.content
    return ApprovalRequest.objects.get(job_id=response.json()["job_id"], status="pending")


def test_approval_ids_are_unguessable_public_ids(reviewer: APIClient, pending: ApprovalRequest) -> None:
    listed = reviewer.get("/api/v1/approvals").json()["results"]
    assert [a["approval_id"] for a in listed] == [pending.public_id]
    assert pending.public_id.startswith("apr_") and len(pending.public_id) >= 24
    # the internal integer key is no address
    assert reviewer.get(f"/api/v1/approvals/{pending.pk}").status_code == 404
    assert reviewer.post(f"/api/v1/approvals/{pending.pk}/approve", {}, format="json").status_code == 404


def test_deciding_someone_elses_request_answers_404_whatever_its_state(
    api: APIClient, make_principal: Any, reviewer: APIClient, pending: ApprovalRequest
) -> None:
    # given principals who may neither see nor decide the request: no grant, another scope's
    # grant, staff without a grant, and the submitter (who holds no approver grant)
    outsiders = {
        "no grant": _client(make_principal("nobody", ("demo:run",))),
        "other scope": _client(make_principal("crm-reviewer", ("approve:crm",))),
        "staff": _client(make_principal("operator", (), staff=True)),
        "submitter": api,
    }
    url = f"/api/v1/approvals/{pending.public_id}"
    # then pending, and then decided, it answers 404 not_found to each, like an unknown id
    for state in ("pending", "approved"):
        if state == "approved":
            assert reviewer.post(f"{url}/approve", {}, format="json").status_code == 200
        for who, client in outsiders.items():
            for action in ("approve", "deny"):
                response = client.post(f"{url}/{action}", {}, format="json")
                assert (response.status_code, response.json()) == (
                    404, {"code": "not_found", "detail": "No such approval request."}), (state, who, action)
            unknown = client.post("/api/v1/approvals/apr_doesnotexist/approve", {}, format="json")
            assert unknown.json() == {"code": "not_found", "detail": "No such approval request."}
    pending.refresh_from_db()
    assert pending.decisions.count() == 1
