"""``/metrics``: who may read it, and that the platform's numbers are in it.

The integration test runs a job through a real worker process and reads its samples back
through the multiprocess directory, as Prometheus would from the web process.
"""

from __future__ import annotations

import re
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from django.test import Client
from rest_framework.test import APIClient

from config.celery import app
from jobs.metrics import message_refused, process_metrics_wsgi_app
from tests.conftest import wait_status
from tests.harness import wait_until

SCRAPE_TOKEN = "scrape-" + "x" * 24


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when absent), labels matched exactly and in any order."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(3) or ""))
        if found == labels:
            return float(match.group(4))
    return 0.0


@pytest.fixture
def staff_api(make_principal: Any) -> APIClient:
    staff = make_principal(username="ops", grants=(), staff=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {staff.token}")
    return client


@pytest.mark.django_db
def test_metrics_need_staff_or_the_scrape_token(client: Client, api: APIClient, staff_api: APIClient,
                                                settings: Any) -> None:
    settings.METRICS_TOKEN = SCRAPE_TOKEN
    # anonymous, a wrong bearer token, an unknown API token: 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Token " + "0" * 40).status_code == 401
    # an authenticated principal that is not staff: 403
    assert api.get("/metrics").status_code == 403
    # staff (token or session) and the scraper: 200 in Prometheus text format
    for response in (staff_api.get("/metrics"), client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {SCRAPE_TOKEN}")):
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401


@pytest.mark.django_db
def test_submits_and_database_gauges_are_exposed(submit: Any, staff_api: APIClient,
                                                 django_capture_on_commit_callbacks: Any) -> None:
    # given: the numbers before
    before = staff_api.get("/metrics").content.decode()
    submitted = _sample(before, "jobs_submitted_total", job_type="demo.flaky", status="queued")

    # when: two jobs are submitted (the counter is written after commit; no worker runs here)
    with django_capture_on_commit_callbacks(execute=True):
        submit("demo.flaky", {"fail_times": 0})
        submit("demo.flaky", {"fail_times": 0})
    text = staff_api.get("/metrics").content.decode()

    # then
    assert _sample(text, "jobs_submitted_total", job_type="demo.flaky", status="queued") == submitted + 2
    assert _sample(text, "jobs_by_status", status="queued") == 2
    assert _sample(text, "jobs_by_status", status="succeeded") == 0
    assert "jobs_dead_letter_size 0.0" in text
    assert _sample(text, "jobs_dispatch_lag_seconds") >= 0
    assert "# TYPE jobs_dispatch_lag_seconds gauge" in text
    # and the approval analytics (the add-on's scrape-time collector) are in the same scrape
    assert "# TYPE approval_requests_pending gauge" in text
    assert _sample(text, "approval_requests_pending") == 0


@pytest.mark.integration
def test_a_job_run_by_a_worker_process_shows_in_the_metrics(live: Any, submit: Any, staff_api: APIClient) -> None:
    # given
    before = staff_api.get("/metrics").content.decode()
    finished = _sample(before, "jobs_finished_total", job_type="demo.noop", status="succeeded")
    durations = _sample(before, "job_stage_duration_seconds_count", job_type="demo.noop", stage="execute",
                        outcome="succeeded")
    refused = _sample(before, "job_messages_refused_total", reason="unknown_job")

    # when: a job runs in a worker process, and a forged message for an unknown job arrives
    job_id = submit("demo.noop").json()["job_id"]
    wait_status(job_id, "succeeded")
    app.send_task("jobs.execute", args=["job_does_not_exist", "execute", "t"], queue="execute")

    # then: the worker's samples are read back through the multiprocess directory
    def scraped() -> str | None:
        text = staff_api.get("/metrics").content.decode()
        return text if _sample(text, "job_messages_refused_total", reason="unknown_job") > refused else None

    text = wait_until(scraped, timeout=30, message="the refused message to be counted")
    assert _sample(text, "jobs_finished_total", job_type="demo.noop", status="succeeded") == finished + 1
    assert _sample(text, "job_stage_duration_seconds_count", job_type="demo.noop", stage="execute",
                   outcome="succeeded") == durations + 1
    assert _sample(text, "jobs_by_status", status="succeeded") == 1


def test_worker_host_exporter_serves_process_samples_to_the_scrape_token() -> None:
    # given: a sample written by this process to the multiprocess directory
    message_refused(reason="exporter_test")
    app = process_metrics_wsgi_app(token=SCRAPE_TOKEN)

    def call(headers: dict[str, str]) -> tuple[str, bytes]:
        environ: dict[str, Any] = {**headers}
        setup_testing_defaults(environ)
        answer: list[str] = []
        body = b"".join(app(environ, lambda status, _headers: answer.append(status)))
        return answer[0], body

    # then: refused without the token, served with it
    assert call({})[0].startswith("401")
    assert call({"HTTP_AUTHORIZATION": "Bearer nope"})[0].startswith("401")
    status, body = call({"HTTP_AUTHORIZATION": f"Bearer {SCRAPE_TOKEN}"})
    assert status.startswith("200")
    assert _sample(body.decode(), "job_messages_refused_total", reason="exporter_test") >= 1
    assert b"jobs_by_status" not in body, "the database gauges come from /metrics on a web host"
