"""Real processes for integration tests: Celery workers, beat and private redis-servers.

Nothing here mocks the broker or the database. Workers run ``celery -A config worker`` against the
pytest-django test database (PostgreSQL) and a real Redis, and are stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# Short timings so recovery paths finish within a test's budget.
FAST_ENV = {
    "JOBS_LEASE_S": "4",
    "JOBS_HEARTBEAT_S": "1",
    "JOBS_CANCEL_POLL_S": "0.2",
    "JOBS_REDISPATCH_AFTER_S": "10",
    "JOBS_DISPATCH_TICK_S": "0.5",
    "JOBS_REAPER_TICK_S": "1",
    "JOBS_TIME_LIMIT_GRACE_S": "2",
    "JOBS_CANCEL_GRACE_S": "2",
    "JOBS_CANCEL_ENFORCE_TICK_S": "0.5",
    "WEBHOOK_TICK_S": "0.3",
    "WEBHOOK_BACKOFF_BASE_S": "0.2",
    "WEBHOOK_BACKOFF_MAX_S": "0.5",
    "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    "CELERY_WORKER_SEND_TASK_EVENTS": "0",
    "CELERY_TASK_SEND_SENT_EVENT": "0",
    "LOG_LEVEL": "INFO",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def database_url() -> str:
    """The URL of the database this test process uses (the pytest-django test database)."""
    db = connection.settings_dict
    if db["ENGINE"] != "django.db.backends.postgresql":
        raise RuntimeError("integration tests need PostgreSQL (set DATABASE_URL)")
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


def child_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(FAST_ENV)
    env["DATABASE_URL"] = database_url()
    env["CELERY_BROKER_URL"] = settings.CELERY_BROKER_URL
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    extra_cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (warm shutdown), then SIGKILL the whole process group after ``timeout``."""
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for cleanup in self.extra_cleanup:
            cleanup()


def _spawn(name: str, args: list[str], env: dict[str, str]) -> Proc:
    log_dir = Path(tempfile.mkdtemp(prefix=f"jp-{name}-"))
    log_path = log_dir / "out.log"
    handle = log_path.open("wb")
    popen = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    handle.close()
    return Proc(name=name, popen=popen, log_path=log_path)


def start_worker(
    *,
    name: str,
    queues: Iterable[str] = ("intake", "execute", "finalize", "control", "delivery"),
    concurrency: int = 2,
    env: dict[str, str] | None = None,
    broker_url: str | None = None,
    ready_timeout: float = 60.0,
) -> Proc:
    """Start ``celery worker`` and wait until it answers a ping over the broker."""
    hostname = f"{name}-{os.getpid()}-{int(time.time() * 1000) % 100000}@%h"
    overrides = dict(env or {})
    if broker_url:
        overrides["CELERY_BROKER_URL"] = broker_url
    proc = _spawn(
        name,
        [
            PYTHON, "-m", "celery", "-A", "config", "worker", "-Q", ",".join(queues),
            "-c", str(concurrency), "-P", "prefork", "-n", hostname, "--without-gossip",
            "--without-mingle", "-l", "INFO",
        ],
        child_env(**overrides),
    )
    wait_for_worker(proc, hostname.replace("%h", socket.gethostname()), broker_url, ready_timeout)
    return proc


def wait_for_worker(proc: Proc, hostname: str, broker_url: str | None, timeout: float) -> None:
    from config.celery import app

    deadline = time.monotonic() + timeout
    with app.connection_for_write(broker_url) if broker_url else app.connection_for_write() as conn:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"worker {proc.name} exited:\n{proc.log()[-4000:]}")
            replies = app.control.ping(destination=[hostname], timeout=0.5, connection=conn)
            if replies:
                return
            time.sleep(0.2)
    proc.stop()
    raise RuntimeError(f"worker {proc.name} not ready in {timeout}s:\n{proc.log()[-4000:]}")


# The web server's database connections carry this name (pg_stat_activity.application_name).
WEB_APPLICATION_NAME = "jp-test-web"


@dataclass
class WebServer:
    """The ASGI web tier (``uvicorn config.asgi:application``) on a spare loopback port."""

    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.stop(timeout=10)


def start_web(*, env: dict[str, str] | None = None, workers: int = 1, ready_timeout: float = 60.0) -> WebServer:
    """Start the web server the platform runs, on the test database and broker; wait until it
    answers HTTP (an unauthenticated API request answers 401)."""
    import urllib.error
    import urllib.request

    port = free_port()
    proc = _spawn(
        "web",
        [PYTHON, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers), "--lifespan", "off", "--log-level", "warning", "--no-access-log",
         "--timeout-graceful-shutdown", "3"],
        child_env(**{"LOG_LEVEL": "WARNING", **(env or {})}),
    )
    server = WebServer(proc, port)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"web server exited:\n{proc.log()[-4000:]}")
        try:
            urllib.request.urlopen(f"{server.url}/api/v1/me", timeout=1)
        except urllib.error.HTTPError:
            return server  # it answered (401)
        except OSError:
            time.sleep(0.1)
            continue
        return server
    proc.stop()
    raise RuntimeError(f"web server not ready in {ready_timeout}s:\n{proc.log()[-4000:]}")


def start_beat(*, env: dict[str, str] | None = None, broker_url: str | None = None) -> Proc:
    """``celery beat`` with a throwaway file scheduler (the test database is flushed between
    tests, which the database scheduler would not expect); the schedule is the same
    CELERY_BEAT_SCHEDULE the platform uses."""
    workdir = Path(tempfile.mkdtemp(prefix="jp-beat-"))
    overrides = dict(env or {})
    if broker_url:
        overrides["CELERY_BROKER_URL"] = broker_url
    proc = _spawn(
        "beat",
        [
            PYTHON, "-m", "celery", "-A", "config", "beat", "-S", "celery.beat:PersistentScheduler",
            "-s", str(workdir / "schedule"), "--pidfile", str(workdir / "beat.pid"), "-l", "INFO",
        ],
        child_env(**overrides),
    )
    proc.extra_cleanup.append(lambda: shutil.rmtree(workdir, ignore_errors=True))
    return proc


@dataclass
class RedisServer:
    port: int
    proc: Proc

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.stop(timeout=5)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def start_redis(port: int | None = None) -> RedisServer:
    """A private redis-server on a spare loopback port, keeping nothing on disk."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found")
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="jp-redis-"))
    proc = _spawn(
        "redis",
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        dict(os.environ),
    )
    proc.extra_cleanup.append(lambda: shutil.rmtree(workdir, ignore_errors=True))
    server = RedisServer(port, proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server.ping():
            return server
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"redis-server on {port} did not start:\n{proc.log()}")


def wait_until(predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.1,
               message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def purge_queues(broker_url: str | None = None) -> None:
    from config.celery import app

    with app.connection_for_write(broker_url) if broker_url else app.connection_for_write() as conn:
        app.control.purge(connection=conn)


class SessionStack:
    """The suite's shared worker + beat on the shared broker.

    Tests that run a private stack (own redis-server, own workers) pause it first: both stacks
    would otherwise read the same test database, and the shared beat's dispatcher would admit
    the private test's jobs to the shared broker. ``ensure`` restarts it for the next test.
    """

    def __init__(self) -> None:
        self.procs: dict[str, Proc] = {}

    def start(self) -> None:
        purge_queues()
        self.procs = {"worker": start_worker(name="suite", concurrency=2), "beat": start_beat()}

    def ensure(self) -> dict[str, Proc]:
        if not self.procs or not all(p.alive() for p in self.procs.values()):
            logs = {n: p.log()[-3000:] for n, p in self.procs.items() if not p.alive()}
            self.stop()
            if logs:
                print(f"session stack restarted; dead: {logs}")
            self.start()
        return self.procs

    def pause(self) -> None:
        self.stop()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()
        self.procs = {}


SESSION = SessionStack()


def race(n: int, action: Callable[[int], Any], *, timeout: float = 60.0) -> list[Any]:
    """Run ``action(i)`` in ``n`` threads released at the same instant; each thread has its own
    database connection (closed after). An exception is returned in place of the result."""
    import threading

    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = action(i)
        except Exception as exc:  # returned for the assertions
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return results


def start_web_server(*, env: dict[str, str] | None = None, ready_timeout: float = 60.0) -> WebServer:
    """The platform's web tier as ``manage.py runplatform`` runs it (uvicorn, ``config.asgi``) on
    a spare loopback port, against the test database (see :func:`start_web`)."""
    return start_web(env=env, ready_timeout=ready_timeout)


def _gunicorn_has_control_socket() -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return "control_socket_disable" in {s.name for s in KNOWN_SETTINGS}
