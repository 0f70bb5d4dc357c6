"""schemathesis against the live schema of a running web server: every operation, every answer.

The web tier runs as it does in production (``tests.harness.start_web_server``: gunicorn,
``config.wsgi``) on the test database, with a private redis-server as its broker and cache (no
worker consumes what the fuzzer submits; nothing it submits ever runs). The fuzzer holds a
staff principal's token with every grant but ``net:call`` and gets real ids to aim at: jobs in
several statuses, pending approvals of another principal, a dead-lettered job to replay, a
session. Its checks:

- ``not_a_server_error``: no 5xx, whatever it sends;
- ``status_code_conformance``: every status is declared for the operation;
- ``content_type_conformance``: every Content-Type is the declared one;
- ``response_schema_conformance``: every body matches its declared schema.

Bounded: ``FUZZ_MAX_EXAMPLES`` (default 25) per operation and phase, a 10 s request timeout,
event streams end after 1 s (``API_SSE_MAX_S``). About a minute on two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from approvals.models import ApprovalRequest
from audit.events import Event
from jobs.models import JobStatus
from jobs.services.submit import SubmitSpec, job_submit
from jobs.transitions import job_transition
from tests import harness

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def _world(make_principal: Any) -> dict[str, Any]:
    """Committed rows the fuzzer can reach by id; returns its token and the ids."""
    fuzzer = make_principal("fuzzer", ("demo:*", "store:write", "approve:*", "jobs:replay"), staff=True)
    submitter = make_principal("fuzz-submitter", ("demo:*", "store:write"))

    def submit(who: Any, **spec: Any) -> Any:
        return job_submit(principal=who.user, spec=SubmitSpec(**{"session_id": "fz-session", **spec})).job

    queued = submit(fuzzer, job_type="demo.noop", inputs={"n": 1})
    dead = submit(fuzzer, job_type="demo.noop", inputs={"n": 2})
    job_transition(job_id=dead.id, to=JobStatus.DEAD_LETTERED, allowed_from=[JobStatus.QUEUED],
                   event=Event.DEAD_LETTERED, updates={"error_class": "permanent", "error": "fuzz fixture"})
    waiting = [submit(submitter, job_type="demo.noop", inputs={"n": 10 + i},
                      constraints={"requires_human_ack": True}) for i in range(6)]
    approvals = list(ApprovalRequest.objects.filter(job__in=waiting).values_list("public_id", flat=True))
    assert len(approvals) == len(waiting)
    return {
        "token": fuzzer.token,
        "jobs": [queued.id, dead.id, *(j.id for j in waiting)],
        "approvals": approvals,
        "sessions": ["fz-session", "fz-other"],
    }


def _config(world: dict[str, Any]) -> str:
    """schemathesis.toml: real ids drawn often, the rest generated (so 404s are fuzzed too)."""
    return f"""
[dictionaries.jobs]
values = {_toml_list(world["jobs"])}

[dictionaries.approvals]
values = {_toml_list(world["approvals"])}

[dictionaries.sessions]
values = {_toml_list(world["sessions"])}

[dictionaries.job_types]
values = ["demo.noop", "demo.local_store_write", "demo.reviewed_store_write", "demo.flaky", "nope.unknown"]

[parameters]
"path.job_id" = {{ dictionary = "jobs", probability = 0.6 }}
"path.approval_id" = {{ dictionary = "approvals", probability = 0.6 }}
"path.session_id" = {{ dictionary = "sessions", probability = 0.5 }}
"query.session_id" = {{ dictionary = "sessions", probability = 0.5 }}
"body.job_type" = {{ dictionary = "job_types", probability = 0.7 }}
"body.session_id" = {{ dictionary = "sessions", probability = 0.5 }}
"""


def test_schemathesis_finds_no_server_error_and_no_schema_violation(transactional_db: None,
                                                                     make_principal: Any) -> None:
    world = _world(make_principal)
    redis = harness.start_redis()
    server = None
    try:
        server = harness.start_web_server(env={
            "CELERY_BROKER_URL": redis.url,
            "API_SSE_MAX_S": "1", "API_SSE_POLL_S": "0.2",
            "LOG_LEVEL": "ERROR",
        })
        workdir = Path(tempfile.mkdtemp(prefix="jp-fuzz-"))
        config = workdir / "schemathesis.toml"
        config.write_text(_config(world))
        argv = [
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run",
            f"{server.url}/api/schema/", "-H", f"Authorization: Token {world['token']}",
            "--checks", CHECKS,
            "--max-examples", os.environ.get("FUZZ_MAX_EXAMPLES", "25"),
            "--request-timeout", "10", "--workers", "2",
        ]
        result = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=900, check=False)
        output = result.stdout + result.stderr
        (workdir / "schemathesis.out").write_text(output)
        server_log = server.proc.log()
        assert result.returncode == 0, (
            f"--- web server log ---\n{server_log[-4000:]}\n--- schemathesis ---\n{output[-20000:]}"
        )
        assert "Traceback" not in server_log, server_log[-5000:]
    finally:
        if server is not None:
            server.stop()
        redis.stop()


def test_concurrent_first_schema_requests_all_answer(transactional_db: None) -> None:
    # given a fresh web server (threaded) that has not generated its schema yet
    server = harness.start_web_server()
    try:
        # when several clients ask for the schema at the same moment
        def fetch(_: int) -> int:
            with urllib.request.urlopen(f"{server.url}/api/schema/?format=json", timeout=60) as response:
                return int(response.status)

        statuses = harness.race(6, fetch)
        # then every one gets it (drf-spectacular's lazy extension loading is not thread-safe)
        assert statuses == [200] * 6, f"{statuses}\n{server.proc.log()[-3000:]}"
    finally:
        server.stop()
