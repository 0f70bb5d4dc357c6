"""Shared fixtures.

Integration tests (marker ``integration``) run real ``celery worker`` and ``celery beat``
processes against the pytest-django test database on PostgreSQL and a real Redis. Under
``CI=true`` a missing PostgreSQL or Redis fails the run; elsewhere those tests are skipped with
the reason.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from tests import harness

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
_service_problem: str | None = None


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _check_services() -> str | None:
    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        return f"DATABASE_URL is not PostgreSQL ({db['ENGINE']})"
    if not _reachable(db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)):
        return f"PostgreSQL is not reachable at {db.get('HOST')}:{db.get('PORT')}"
    broker = urlparse(settings.CELERY_BROKER_URL)
    if broker.scheme not in {"redis", "rediss"}:
        return f"CELERY_BROKER_URL is not Redis ({settings.CELERY_BROKER_URL})"
    if not _reachable(broker.hostname or "127.0.0.1", broker.port or 6379):
        return f"Redis is not reachable at {broker.hostname}:{broker.port}"
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    global _service_problem
    _service_problem = _check_services()
    if _service_problem and IN_CI:
        pytest.exit(f"CI=true and a required service is missing: {_service_problem}", returncode=3)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _service_problem:
        return
    skip = pytest.mark.skip(reason=f"needs PostgreSQL + Redis: {_service_problem}")
    for item in items:
        if "integration" in item.keywords or "chaos" in item.keywords:
            item.add_marker(skip)


# --- flushing while workers run ------------------------------------------------------------------


def _retrying_fixture_teardown() -> None:
    """Retry the TRUNCATE that ends a transactional test when it deadlocks with a live worker.

    Workers and beat keep polling the test database between tests (dispatch tick, reaper); a
    TRUNCATE of every table can deadlock with one of their reads, and PostgreSQL then aborts one
    side. Retrying the flush is the right answer: the worker's read is harmless.
    """
    import time

    from django.core.management.base import CommandError
    from django.db import OperationalError
    from django.test import TransactionTestCase

    original = TransactionTestCase._fixture_teardown  # type: ignore[attr-defined]

    def teardown(self: TransactionTestCase) -> None:
        for attempt in range(6):
            try:
                return original(self)
            except (CommandError, OperationalError):
                if attempt == 5:
                    raise
                time.sleep(0.2 * (attempt + 1))
        return None

    TransactionTestCase._fixture_teardown = teardown  # type: ignore[attr-defined]


_retrying_fixture_teardown()


# --- principals and clients -------------------------------------------------------------------


@pytest.fixture
def make_principal(db: None) -> Any:
    from tests.factories import DEFAULT_GRANTS, PrincipalFactory

    def make(username: str = "agent", grants: tuple[str, ...] = DEFAULT_GRANTS, **kwargs: Any) -> Any:
        return PrincipalFactory.create(username=username, grants=grants, **kwargs)

    return make


@pytest.fixture
def principal(make_principal: Any) -> Any:
    return make_principal()


@pytest.fixture
def api(principal: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {principal.token}")
    return client


# --- time -------------------------------------------------------------------------------------


@pytest.fixture
def clock() -> Iterator[Any]:
    """The clock of this process, stopped at the test's start; the test moves it (``shift``,
    ``move_to``). Worker processes keep real time: only tests that run the code under test in
    this process stop the clock."""
    import time_machine
    from django.utils import timezone

    with time_machine.travel(timezone.now(), tick=False) as traveller:
        yield traveller


# --- real workers -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def worker_processes(django_db_setup: None, django_db_blocker: Any) -> Iterator[harness.SessionStack]:
    """One worker for every queue plus beat, for the whole session, on the test database."""
    if _service_problem:
        pytest.skip(_service_problem)
    try:
        yield harness.SESSION
    finally:
        harness.SESSION.stop()


@pytest.fixture
def live(transactional_db: None, worker_processes: harness.SessionStack) -> Iterator[dict[str, harness.Proc]]:
    """Committed data (workers see it) and live workers; stale broker messages purged first."""
    procs = worker_processes.ensure()
    harness.purge_queues()
    yield procs


@pytest.fixture(scope="session")
def web_process(django_db_setup: None) -> Iterator[harness.WebServer]:
    """The ASGI web server (uvicorn, as ``runplatform`` runs it) on the test database, for the session."""
    if _service_problem:
        pytest.skip(_service_problem)
    # A long re-check period: a wait or stream that ends quickly was woken by a notification.
    server = harness.start_web(env={
        "API_LIVE_RECHECK_S": "30",
        "DATABASE_URL": f"{harness.database_url()}?application_name={harness.WEB_APPLICATION_NAME}",
    })
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def web(live: dict[str, harness.Proc], web_process: harness.WebServer) -> harness.WebServer:
    """A real web server over a socket, with committed data and live workers (``live``)."""
    if not web_process.proc.alive():
        raise RuntimeError(f"web server died:\n{web_process.proc.log()[-4000:]}")
    return web_process


def wait_status(job_id: str, statuses: set[str] | str, timeout: float = 30.0) -> Any:
    """Poll the job until its status is one of ``statuses``; return the job."""
    from jobs.models import Job

    wanted = {statuses} if isinstance(statuses, str) else set(statuses)

    def check() -> Any:
        job = Job.objects.filter(pk=job_id).first()
        return job if job is not None and job.status in wanted else None

    try:
        return harness.wait_until(check, timeout=timeout, message=f"{job_id} in {sorted(wanted)}")
    except AssertionError:
        job = Job.objects.filter(pk=job_id).first()
        raise AssertionError(
            f"{job_id} did not reach {sorted(wanted)} in {timeout}s; it is "
            f"{job.status if job else 'missing'} ({job.error if job else ''})"
        ) from None


def wait_dispatch_ticks(principal: Any, n: int = 2, timeout: float = 30.0) -> None:
    """Return once the beat's dispatch tick has made ``n`` whole passes after this call.

    Only that tick promotes a due retry (stamped ``retry_due``), and the same tick's dispatch
    pass then admits it. So a sentinel no-op made ``retry_scheduled`` and due now that has
    succeeded proves a tick that began after the call promoted, admitted and published, and a
    worker ran what it published; one sentinel at a time, in a session of its own. A barrier
    for "the dispatcher had its chance and nothing happened", in place of a fixed sleep.
    """
    from jobs.models import JobStatus
    from tests.factories import JobFactory

    for _ in range(n):
        sentinel = JobFactory.create(principal=principal, session_id="tick-barrier", status=JobStatus.RETRY_SCHEDULED)
        wait_status(sentinel.id, JobStatus.SUCCEEDED, timeout=timeout)


@pytest.fixture
def submit(api: APIClient) -> Any:
    def do(job_type: str, inputs: dict[str, Any] | None = None, *, session_id: str = "s-test",
           expect: int | None = 202, **extra: Any) -> Any:
        body = {"job_type": job_type, "inputs": inputs or {}, "session_id": session_id, **extra}
        try:
            asyncio.get_running_loop()  # a browser test: Playwright's sync API runs a loop here
        except RuntimeError:
            response = api.post("/api/v1/jobs", body, format="json")
        else:
            # The submit view is async; Django runs it with async_to_sync, which refuses a thread
            # that has a running loop. These tests use committed data (live), so another thread
            # sees what this one wrote.
            with ThreadPoolExecutor(1) as pool:
                response = pool.submit(api.post, "/api/v1/jobs", body, format="json").result()
        if expect is not None:
            assert response.status_code == expect, response.content
        return response

    return do


# --- a real ASGI web server (uvicorn) -------------------------------------------------------------


@pytest.fixture(scope="session")
def web_server(django_db_setup: None, django_db_blocker: Any) -> Iterator[Any]:
    """``uvicorn config.asgi:application`` on a free port and the test database, for the session."""
    if _service_problem:
        pytest.skip(_service_problem)
    from tests.mcp_support import start_web

    server = start_web()
    try:
        yield server
    finally:
        server.stop()
