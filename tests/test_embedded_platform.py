"""End to end on the embedded default: ``manage.py runplatform`` with no DATABASE_URL and no
CELERY_BROKER_URL (SQLite + kombu's filesystem broker under a temporary PLATFORM_VAR_DIR).

A pure subprocess test: it talks HTTP to the web server and to Flower, needs no test database
and no Redis, and checks by PID that Ctrl-C leaves no process behind.
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
SECRET = "tok-never-echo-3f9a"

# Variables that would point the platform away from its embedded default.
UNSET = ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERY_FILESYSTEM_DIR",
         "DJANGO_SECRET_KEY", "FLOWER_BASIC_AUTH", "PLATFORM_DEMO_PASSWORD", "LOG_LEVEL")


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


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET and not k.startswith("PYTEST_")}
    env.update({"PLATFORM_VAR_DIR": str(tmp_path / "var"), "PLATFORM_DEMO_TOKEN": DEMO_TOKEN,
                "PYTHONUNBUFFERED": "1"})
    port, flower_port = free_port(), free_port()
    log_path = tmp_path / "runplatform.log"
    with log_path.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "manage.py", "runplatform", "--port", str(port), "--flower-port",
             str(flower_port), "--concurrency", "2", "--web-workers", "1", "--web-threads", "4"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    proc = Platform(popen, log_path, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{flower_port}")
    try:
        yield proc
    finally:
        # Whatever happened, nothing started here may outlive the test.
        groups = {popen.pid, *proc.child_pids.values()}
        groups |= {int(pid) for pid in re.findall(r"platform: started \w+ pid (\d+)", proc.log())}
        if popen.poll() is None:
            popen.send_signal(signal.SIGINT)
            try:
                popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if popen.poll() is None:
            popen.wait(timeout=10)


def _wait_ready(proc: Platform) -> None:
    def ready() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"runplatform exited with {proc.popen.returncode}:\n{proc.log()[-5000:]}")
        return "platform ready" in proc.log()

    try:
        wait_until(ready, timeout=READY_TIMEOUT_S, interval=0.2, message="'platform ready'")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{proc.log()[-5000:]}") from None
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
    assert set(platform.child_pids) == {"web", "worker", "beat", "flower"}, platform.log()[-3000:]
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

    # then: Flower refuses anonymous callers and lists the worker to authenticated ones
    status, _ = _request(f"{platform.flower}/api/workers")
    assert status == 401

    def worker_listed() -> dict[str, Any] | None:
        code, workers = _request(f"{platform.flower}/api/workers?refresh=1", basic=flower_auth)
        return workers if code == 200 and isinstance(workers, dict) and workers else None

    workers = wait_until(worker_listed, timeout=30, interval=0.5, message="Flower to list the worker")
    assert any(name.startswith("worker@") for name in workers), workers

    # when: Ctrl-C
    platform.popen.send_signal(signal.SIGINT)
    try:
        code = platform.popen.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"runplatform did not stop in {STOP_TIMEOUT_S}s:\n{platform.log()[-3000:]}")

    # then: it exits 0 and no child (nor any process of a child's group) is left
    assert code == 0, platform.log()[-3000:]
    deadline = time.monotonic() + 10
    while _alive(set(platform.child_pids.values())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _alive(set(platform.child_pids.values())) == [], platform.log()[-3000:]
