"""The authorization matrix: every endpoint × (owner, other principal, staff, approver, no token,
bad token), each against the same world — the owner's job waiting for review, its approval
request, the owner's session.

The endpoints are read from the URLconf, so a new one fails ``test_every_endpoint_is_in_the_matrix``
until its row is written here. For each cell the test checks the status, that the answer names
nothing the caller may not see (the owner's job id, approval id, username), and that a caller
who may not act changed nothing (job status, stamps, approval, decisions, the session's pause).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.test import APIClient

from approvals.models import ApprovalRequest
from audit.models import AuditStamp
from jobs.models import Job, SessionControl

OWNER, OTHER, STAFF, APPROVER, ANON, BAD = "owner", "other", "staff", "approver", "no_token", "bad_token"
ROLES = (OWNER, OTHER, STAFF, APPROVER, ANON, BAD)
SESSION = "mx-session"
OWNER_NAME = "mx-owner"


def _row(owner: int, other: int, staff: int, approver: int, anon: int = 401, bad: int = 401) -> dict[str, int]:
    return {OWNER: owner, OTHER: other, STAFF: staff, APPROVER: approver, ANON: anon, BAD: bad}


# (route name, method) -> expected status per role. The owner holds demo:* and store:write (no
# approver grant); other holds demo:*; staff is an operator with no grant; approver holds
# approve:* only. The job is the owner's, pending approval.
MATRIX: dict[tuple[str, str], dict[str, int]] = {
    ("job-list", "GET"): _row(200, 200, 200, 200),
    # everyone may submit; without demo:run the job is recorded as blocked (403), theirs alone
    ("job-list", "POST"): _row(202, 202, 403, 403),
    # a batch answers 200 with one result per item; the items of a principal without the grant
    # are recorded as blocked (their own 403 inside the answer)
    ("job-batch", "POST"): _row(200, 200, 200, 200),
    ("job-bulk-cancel", "POST"): _row(200, 200, 200, 200),
    ("job-detail", "GET"): _row(200, 404, 200, 404),
    ("job-cancel", "POST"): _row(202, 404, 202, 404),
    ("job-audit", "GET"): _row(200, 404, 200, 404),
    ("job-events", "GET"): _row(200, 404, 200, 404),
    # the submitter learns replay is for operators; staff may, but the job is not dead-lettered
    ("job-replay", "POST"): _row(403, 404, 409, 404),
    ("session-detail", "GET"): _row(200, 200, 200, 200),
    ("session-pause", "POST"): _row(200, 200, 200, 200),
    ("session-resume", "POST"): _row(200, 200, 200, 200),
    ("approval-list", "GET"): _row(200, 200, 200, 200),
    ("approval-detail", "GET"): _row(404, 404, 404, 200),
    ("approval-approve", "POST"): _row(404, 404, 404, 200),
    ("approval-deny", "POST"): _row(404, 404, 404, 200),
    # staff only: retention, the policy what-if; staff and approvers: approval analytics
    ("jobs-cleanup", "POST"): _row(403, 403, 200, 403),
    ("policy-simulate", "POST"): _row(403, 403, 200, 403),
    ("approval-stats", "GET"): _row(403, 403, 200, 200),
    # the caller itself: its principal, grants, sessions and webhook secret; rotating its own secret
    ("me", "GET"): _row(200, 200, 200, 200),
    ("me-webhook-secret-rotate", "POST"): _row(200, 200, 200, 200),
    # metrics: staff (or the scrape token); an authenticated non-staff caller is refused
    ("metrics", "GET"): _row(403, 403, 200, 403),
    ("metrics", "POST"): _row(405, 405, 405, 405, anon=405, bad=405),
    # public pages and probes read no credentials: the start page (counts only for staff), health
    ("home", "GET"): _row(200, 200, 200, 200, anon=200, bad=200),
    ("home", "POST"): _row(405, 405, 405, 405, anon=405, bad=405),
    ("healthz", "GET"): _row(200, 200, 200, 200, anon=200, bad=200),
    ("healthz", "POST"): _row(405, 405, 405, 405, anon=405, bad=405),
    ("readyz", "GET"): _row(200, 200, 200, 200, anon=200, bad=200),
    ("readyz", "POST"): _row(405, 405, 405, 405, anon=405, bad=405),
    ("audit-public-key", "GET"): _row(200, 200, 200, 200, anon=200, bad=200),
    # the schema and its UI are public and read no credentials
    ("schema", "GET"): _row(200, 200, 200, 200, anon=200, bad=200),
    ("api-docs", "GET"): _row(200, 200, 200, 200, anon=200, bad=200),
}

# Who may see the owner's job (its id, the owner's name) or its approval id in an answer.
SEES_JOB = {OWNER, STAFF, APPROVER}
SEES_JOB_ON = {  # per endpoint where it differs from SEES_JOB
    "approval-list": {APPROVER},  # the owner holds no approver grant: its list is empty
    "approval-detail": {APPROVER},
    "approval-approve": {APPROVER},
    "approval-deny": {APPROVER},
    "job-list": {OWNER, STAFF},
    "job-batch": set(),  # its answer names only the caller's new jobs
    "job-detail": {OWNER, STAFF},
    "job-audit": {OWNER, STAFF},
    "job-cancel": {OWNER, STAFF},
    "job-replay": {OWNER, STAFF},
    "job-bulk-cancel": set(),
    "session-detail": {OWNER, STAFF},  # staff see every principal's part of the session
    "session-pause": {OWNER, STAFF},
    "session-resume": {OWNER, STAFF},
    "jobs-cleanup": {STAFF},
    "policy-simulate": {STAFF},
    "approval-stats": {STAFF, APPROVER},
    "me": {OWNER},
    "me-webhook-secret-rotate": {OWNER},
    "metrics": {STAFF},
    "home": {STAFF},
}
# Who may change the owner's job, approval or session through the endpoint.
CHANGES = {
    "job-cancel": {OWNER, STAFF},
    "job-bulk-cancel": {OWNER, STAFF},
    "session-pause": {OWNER, STAFF},
    "session-resume": {OWNER, STAFF},
    "approval-approve": {APPROVER},
    "approval-deny": {APPROVER},
}
BODIES: dict[str, dict[str, Any]] = {
    "job-batch": {"jobs": [{"job_type": "demo.noop", "inputs": {}, "session_id": SESSION}]},
    "job-list": {"job_type": "demo.noop", "inputs": {}, "session_id": SESSION},
    "job-bulk-cancel": {"session_id": SESSION},
    "session-pause": {},
    "approval-approve": {"comment": "matrix"},
    "approval-deny": {"comment": "matrix"},
    "jobs-cleanup": {"older_than_days": 30, "dry_run": True},
    "policy-simulate": {"rules": [{"order": 0, "name": "mx", "job_type": "demo.*", "decision": "block",
                                   "reason": "matrix"}]},
}
# Routes outside the matrix on purpose: the admin (Django's staff login guards it).
IGNORED_PREFIXES = ("admin/", "static/")


def _walk(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, URLPattern]]:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        else:
            yield prefix + str(pattern.pattern), pattern


def discovered_endpoints() -> dict[tuple[str, str], URLPattern]:
    """(route name, method) for every route of the URLconf outside IGNORED_PREFIXES."""
    found: dict[tuple[str, str], URLPattern] = {}
    for route, pattern in _walk(get_resolver().url_patterns):
        if route.startswith(IGNORED_PREFIXES):
            continue
        view = getattr(pattern.callback, "cls", None) or getattr(pattern.callback, "view_class", None)
        methods = ([m.upper() for m in view.http_method_names if m not in ("options", "head") and hasattr(view, m)]
                   if view is not None else ["GET", "POST"])
        for method in methods:
            found[(pattern.name or route, method)] = pattern
    return found


def test_every_endpoint_is_in_the_matrix() -> None:
    found = set(discovered_endpoints())
    missing = sorted(found - set(MATRIX))
    assert not missing, f"endpoints without an authorization row in tests/test_authz_matrix.py: {missing}"
    stale = sorted(set(MATRIX) - found)
    assert not stale, f"rows for endpoints that no longer exist: {stale}"


@dataclass
class World:
    clients: dict[str, APIClient]
    job_id: str
    approval_id: str
    owner_id: int

    def snapshot(self) -> tuple[Any, ...]:
        job = Job.objects.get(pk=self.job_id)
        approval = ApprovalRequest.objects.get(public_id=self.approval_id)
        paused = SessionControl.objects.filter(principal_id=self.owner_id, session_id=SESSION,
                                               paused=True).exists()
        return (job.status, AuditStamp.objects.filter(job_id=self.job_id).count(), approval.status,
                approval.decisions.count(), paused)


@pytest.fixture
def world(make_principal: Any) -> World:
    owner = make_principal(OWNER_NAME, ("demo:*", "store:write"))
    people = {
        OWNER: owner,
        OTHER: make_principal("mx-other", ("demo:*",)),
        STAFF: make_principal("mx-staff", (), staff=True),
        APPROVER: make_principal("mx-approver", ("approve:*",)),
    }
    clients = {}
    for role, who in people.items():
        clients[role] = APIClient()
        clients[role].credentials(HTTP_AUTHORIZATION=f"Token {who.token}")
    clients[ANON] = APIClient()
    clients[BAD] = APIClient()
    clients[BAD].credentials(HTTP_AUTHORIZATION="Token 0000000000000000000000000000000000000000")
    submitted = clients[OWNER].post("/api/v1/jobs", {
        "job_type": "demo.noop", "inputs": {}, "session_id": SESSION, "constraints": {"requires_human_ack": True},
    }, format="json")
    assert submitted.status_code == 202, submitted.content
    job_id = submitted.json()["job_id"]
    approval = ApprovalRequest.objects.get(job_id=job_id)
    return World(clients=clients, job_id=job_id, approval_id=approval.public_id, owner_id=owner.user.pk)


def _path(name: str, pattern: URLPattern, world: World) -> str:
    values = {"job_id": world.job_id, "session_id": SESSION, "approval_id": world.approval_id}
    params = list(pattern.pattern.converters)
    unknown = [p for p in params if p not in values]
    assert not unknown, f"give the matrix a value for path parameter(s) {unknown} of {name}"
    return reverse(name, kwargs={p: values[p] for p in params})


CASES = [(name, method, role) for (name, method) in MATRIX for role in ROLES]


@pytest.mark.django_db
@pytest.mark.parametrize("name,method,role", CASES, ids=[f"{m} {n} as {r}" for n, m, r in CASES])
def test_authorization_cell(world: World, name: str, method: str, role: str) -> None:
    pattern = discovered_endpoints().get((name, method))
    if pattern is None:
        pytest.fail(f"{method} {name} is in the matrix but not in the URLconf")
    path = _path(name, pattern, world)
    before = world.snapshot()
    client = world.clients[role]
    if method == "GET":
        response = client.get(path)
    else:
        response = client.generic(method, path, _json(BODIES.get(name)), content_type="application/json")
    try:
        expected = MATRIX[(name, method)][role]
        assert response.status_code == expected, (response.status_code, _body(response)[:500])
        body = _body(response)
        may_see = SEES_JOB_ON.get(name, SEES_JOB)
        if role not in may_see:
            for secret in (world.job_id, world.approval_id, OWNER_NAME):
                assert secret not in body, f"{role} sees {secret!r} in {method} {name}: {body[:500]}"
        if response.status_code in (401, 404):
            data = response.json()
            assert set(data) == {"code", "detail"}, data
            assert data["code"] in {"not_found", "not_authenticated", "authentication_failed"}
        if role not in CHANGES.get(name, set()):
            assert world.snapshot() == before, f"{role} changed the owner's state through {method} {name}"
    finally:
        response.close()


def _json(body: dict[str, Any] | None) -> str:
    return json.dumps(body) if body is not None else ""


def _body(response: Any) -> str:
    if getattr(response, "streaming", False):
        return ""  # an open event stream: its status is the answer
    return response.content.decode("utf-8", "replace")
