"""Outages: the broker down (submits still accepted, run once it is back) and the database down
(the API answers 503, workers back off and finish the job when it returns)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from jobs.models import Job, JobRun
from tests import harness
from tests.conftest import wait_status
from tests.faults import TcpProxy, private_stack

pytestmark = pytest.mark.integration


def test_submit_while_the_broker_is_down_is_accepted_and_runs_when_it_returns(
    transactional_db: None, submit: Any
) -> None:
    with private_stack() as stack:
        # given a broker that is down
        stack.redis.stop()
        # when a job is submitted
        started = time.monotonic()
        body = submit("demo.noop", {"during": "outage"}).json()
        elapsed = time.monotonic() - started
        # then the request succeeded quickly (publish retry policy + connect timeout bound it)
        assert body["status"] == "queued"
        assert elapsed < 5.0, f"submit took {elapsed:.2f}s with the broker down"
        # and the job is left unpublished in the database, for the next dispatch pass
        job = Job.objects.get(pk=body["job_id"])
        assert job.status == "queued" and job.dispatched_at is None
        # when the broker comes back (empty) with a worker and the beat
        stack.restart_redis()
        stack.worker("outage")
        stack.beat()
        # then the dispatch tick publishes it and it runs once
        wait_status(body["job_id"], "succeeded", timeout=30)
        assert JobRun.objects.filter(job_id=body["job_id"]).count() == 1


def test_submit_while_the_broker_hangs_is_accepted_within_the_socket_timeouts(
    transactional_db: None, submit: Any
) -> None:
    with private_stack() as stack:
        # given a broker this process already talks to, that then stops answering (SIGSTOP:
        # the kernel still accepts connections, nothing replies)
        submit("demo.noop", {"warm": True}, session_id="s-hang")
        stack.redis.proc.signal(signal.SIGSTOP)
        try:
            # when a job is submitted
            started = time.monotonic()
            body = submit("demo.noop", {"during": "hang"}, session_id="s-hang").json()
            elapsed = time.monotonic() - started
        finally:
            stack.redis.proc.signal(signal.SIGCONT)
        # then it is accepted after at most a few socket timeouts (3 s each), not minutes,
        # and left unpublished for the next dispatch pass
        assert body["status"] == "queued"
        assert elapsed < 15.0, f"submit took {elapsed:.2f}s with the broker hung"
        assert Job.objects.get(pk=body["job_id"]).dispatched_at is None


def _wsgi_server(database_url: str) -> tuple[subprocess.Popen[bytes], int]:
    port = harness.free_port()
    env = harness.child_env(DATABASE_URL=database_url, DATABASE_CONNECT_TIMEOUT="2")
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(harness.PYTHON), "gunicorn"), "config.wsgi:application",
         "-b", f"127.0.0.1:{port}", "-w", "1", "--timeout", "30"],
        cwd=harness.ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    return proc, port


def _request(port: int, method: str, path: str, body: dict[str, Any] | None = None,
             token: str = "") -> tuple[int, dict[str, Any], dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def test_api_answers_503_database_unavailable_when_the_database_is_down(transactional_db: None) -> None:
    # given the web app running against a database address where nothing listens
    dead = f"postgres://postgres@127.0.0.1:{harness.free_port()}/nowhere"
    proc, port = _wsgi_server(dead)
    try:
        harness.wait_until(lambda: _port_open(port), timeout=30, message="gunicorn listening")
        # when an authenticated client submits, reads and lists
        submit = _request(port, "POST", "/api/v1/jobs", {"job_type": "demo.noop", "inputs": {}, "session_id": "s"},
                          token="0" * 40)
        detail = _request(port, "GET", "/api/v1/jobs/job_x", token="0" * 40)
        listing = _request(port, "GET", "/api/v1/jobs", token="0" * 40)
        # then every answer is a 503 with the stable code and a Retry-After, never a 500
        for status, body, headers in (submit, detail, listing):
            assert status == 503, body
            assert body["code"] == "database_unavailable"
            assert headers.get("Retry-After") == "5"
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=10)


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_worker_backs_off_while_the_database_is_down_and_finishes_after(
    transactional_db: None, submit: Any
) -> None:
    from django.db import connection

    db = connection.settings_dict
    proxy = TcpProxy(db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)).start()
    proxied = harness.database_url().replace(f":{db.get('PORT') or 5432}/", f":{proxy.port}/")
    try:
        with private_stack() as stack:
            # given a worker whose only way to the database is the proxy
            worker = stack.worker("dbdown", DATABASE_URL=proxied, DATABASE_CONNECT_TIMEOUT="1")
            # when the database goes away for the worker and a job is submitted
            proxy.cut()
            body = submit("demo.noop", {"db": "down"}).json()
            harness.wait_until(lambda: "database unavailable" in worker.log(), timeout=30,
                               message=f"the task to back off; worker log:\n{worker.log()[-3000:]}")
            assert Job.objects.get(pk=body["job_id"]).status == "queued"
            # and the database comes back
            proxy.restore()
            # then the retried message runs the job, once
            wait_status(body["job_id"], "succeeded", timeout=60)
            assert JobRun.objects.filter(job_id=body["job_id"]).count() == 1
    finally:
        proxy.cut()
