"""Every job transition is one JSON log line carrying what explains it, and a W3C
``traceparent`` on submit becomes the job's trace id, all the way into the worker's log."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from django.conf import settings
from pythonjsonlogger.json import JsonFormatter
from rest_framework.test import APIClient

from jobs.logcontext import trace_id_from_traceparent
from tests.conftest import wait_status
from tests.harness import wait_until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
FIELDS = {"job_id", "run_id", "trace_id", "from_status", "to_status", "model_version", "tools_used", "attempt",
          "decision", "event", "job_type", "actor"}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (TRACEPARENT, TRACE_ID),
        (f"  {TRACEPARENT} ", TRACE_ID),
        (f"01-{TRACE_ID}-00f067aa0ba902b7-01-later-field", TRACE_ID),  # a later version may add fields
        (f"00-{TRACE_ID}-00f067aa0ba902b7-01-extra", ""),  # version 00 may not
        (f"ff-{TRACE_ID}-00f067aa0ba902b7-01", ""),  # forbidden version
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", ""),  # all-zero trace id
        (f"00-{TRACE_ID}-{'0' * 16}-01", ""),  # all-zero parent id
        (f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01", ""),  # uppercase hex
        ("00-abc-def-01", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_traceparent_parsing(header: str | None, expected: str) -> None:
    assert trace_id_from_traceparent(header) == expected


def _json_formatter() -> JsonFormatter:
    config: dict[str, Any] = settings.LOGGING["formatters"]["json"]  # type: ignore[index]
    return JsonFormatter(config["fmt"], rename_fields=config["rename_fields"])


@pytest.mark.django_db
def test_submit_takes_the_trace_id_from_traceparent_and_logs_the_transition_as_json(
    api: APIClient, caplog: pytest.LogCaptureFixture, django_capture_on_commit_callbacks: Any,
) -> None:
    # given: a submit with a traceparent header and no trace_id in the body
    body = {"job_type": "demo.noop", "inputs": {}, "session_id": "s-log"}
    with caplog.at_level(logging.INFO, logger="jobs.transitions"), \
            django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/v1/jobs", body, format="json", HTTP_TRACEPARENT=TRACEPARENT)

    # then: the job belongs to the caller's trace
    assert response.status_code == 202, response.content
    job = api.get(f"/api/v1/jobs/{response.json()['job_id']}").json()
    assert job["trace_id"] == TRACE_ID

    # then: its creation is one line that parses as JSON with every field
    records = [r for r in caplog.records if r.name == "jobs.transitions"]
    assert len(records) == 1
    line = json.loads(_json_formatter().format(records[0]))
    assert set(line) >= FIELDS, line
    assert line["logger"] == "jobs.transitions" and line["level"] == "INFO"
    assert (line["job_id"], line["trace_id"]) == (job["job_id"], TRACE_ID)
    assert line["run_id"] == response.json()["run_id"], "the run id answered at submit"
    assert (line["from_status"], line["to_status"], line["event"]) == ("", "queued", "submitted")
    assert line["decision"]["action"] == "allow" and "policy_version" in line["decision"], line
    assert line["attempt"] == 0 and line["tools_used"] == []
    assert line["model_version"] == settings.JOBS_MODEL_VERSION


@pytest.mark.django_db
def test_a_trace_id_in_the_body_wins_over_traceparent(api: APIClient) -> None:
    body = {"job_type": "demo.noop", "inputs": {}, "session_id": "s-log", "trace_id": "from-body"}
    response = api.post("/api/v1/jobs", body, format="json", HTTP_TRACEPARENT=TRACEPARENT)
    assert response.status_code == 202, response.content
    assert api.get(f"/api/v1/jobs/{response.json()['job_id']}").json()["trace_id"] == "from-body"


def _lines(log: str, job_id: str) -> list[dict[str, Any]]:
    out = []
    for raw in log.splitlines():
        if job_id not in raw or not raw.startswith("{"):
            continue
        out.append(json.loads(raw))
    return out


@pytest.mark.integration
def test_worker_transition_lines_carry_the_trace_and_what_explains_them(live: Any, api: APIClient) -> None:
    # given: a two-stage job (execute looks the key up, finalize writes it) submitted in a trace
    body = {"job_type": "demo.local_store_write", "session_id": "s-log",
            "inputs": {"key": "log-1", "data": {"n": 1}}}
    response = api.post("/api/v1/jobs", body, format="json", HTTP_TRACEPARENT=TRACEPARENT)
    assert response.status_code == 202, response.content
    job_id = response.json()["job_id"]

    # when: the worker runs it
    wait_status(job_id, "succeeded")

    # then: the worker's log has one JSON transition line per status change, each in the trace
    def transitions() -> list[dict[str, Any]] | None:
        found = [line for line in _lines(live["worker"].log(), job_id) if line.get("logger") == "jobs.transitions"]
        return found if len(found) >= 4 else None

    lines = wait_until(transitions, timeout=15, message="four transition lines in the worker log")
    assert [(x["from_status"], x["to_status"]) for x in lines] == [
        ("queued", "running"), ("running", "queued"), ("queued", "running"), ("running", "succeeded"),
    ]
    for line in lines:
        assert set(line) >= FIELDS, line
        assert line["trace_id"] == TRACE_ID and line["job_id"] == job_id and line["run_id"].startswith("run_")
        assert line["model_version"] == settings.JOBS_MODEL_VERSION
    execute_done, commit_done = lines[1], lines[3]
    assert execute_done["tools_used"] == ["store.lookup"] and execute_done["attempt"] == 1
    assert commit_done["tools_used"] == ["store.write"] and commit_done["job_type"] == "demo.local_store_write"
    assert commit_done["decision"]["action"] == "allow" and commit_done["decision"]["path"], commit_done
    assert lines[0]["run_id"] != lines[2]["run_id"], "each stage runs under its own run id"
    # and other lines the worker logged while running the job carry its trace id too
    assert all(x.get("trace_id") == TRACE_ID for x in _lines(live["worker"].log(), job_id) if "job_id" in x)
