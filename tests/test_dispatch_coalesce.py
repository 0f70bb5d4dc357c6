"""Admission decides at the last moment, in batches, one pass at a time.

- The unclaimed buffer: at most ``JOBS_MAX_UNCLAIMED`` jobs published and not yet claimed, so a
  job submitted later with a higher priority (or from a waiting session) is not stuck behind a
  long FIFO in the broker; messages unclaimed for ``JOBS_UNCLAIMED_STALE_S`` stop counting.
- A request for a pass (``dispatch_kick``) costs one count when the buffer is still at least
  half full, and runs the fair-share pass otherwise.
- Concurrent requests coalesce: one pass runs, one waits, the rest return; caps hold exactly.

Publishing is replaced by a recorder, so no message reaches the broker.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs.admission import dispatcher
from jobs.admission.dispatcher import LOCK_RUN, Room, dispatch_kick, dispatch_ready
from jobs.models import Job, JobStatus
from tests.harness import race

published: list[str] = []


def _record(admitted: list[Any]) -> list[str]:
    published.extend(a.job_id for a in admitted)
    return []


@pytest.fixture(autouse=True)
def record_publish(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    published.clear()
    monkeypatch.setattr(dispatcher, "publish", _record)
    settings.JOBS_MAX_IN_FLIGHT = 200
    settings.JOBS_SESSION_MAX_CONCURRENCY = 3
    settings.JOBS_UNCLAIMED_STALE_S = 10


def _flood(principal: Any, session: str, n: int, *, priority: int = 0, offset_us: int = 0) -> list[str]:
    now = timezone.now()
    jobs = [
        Job(session_id=session, principal=principal.user, job_type="demo.noop", scope="demo", priority=priority,
            created_at=now + timedelta(microseconds=offset_us + i), run_after=now - timedelta(seconds=1))
        for i in range(n)
    ]
    Job.objects.bulk_create(jobs)
    return [j.id for j in jobs]


def _marked() -> list[str]:
    return list(Job.objects.filter(status=JobStatus.QUEUED, dispatched_at__isnull=False).values_list("id", flat=True))


def _claim(ids: list[str]) -> None:
    """Workers took these messages (the claim moves them to running)."""
    Job.objects.filter(pk__in=ids).update(status=JobStatus.RUNNING)


@pytest.mark.django_db
def test_unclaimed_buffer_bounds_admission_and_refills_as_workers_claim(principal: Any, settings: Any) -> None:
    # given twenty sessions with ten ready jobs each, and a buffer of four
    settings.JOBS_MAX_UNCLAIMED = 4
    for s in range(20):
        _flood(principal, f"s{s:02d}", 10, offset_us=s * 100)
    # when a pass runs, only four are published, one per session, round-robin
    assert dispatch_ready() == 4
    first = _marked()
    assert len({Job.objects.get(pk=i).session_id for i in first}) == 4
    # and nothing more while they wait unclaimed
    assert dispatch_ready() == 0
    # when workers claim three of them, then three more go out
    _claim(first[:3])
    assert dispatch_ready() == 3
    assert len(_marked()) == 4


@pytest.mark.django_db
def test_a_later_high_priority_job_overtakes_what_waits_in_the_database(principal: Any, settings: Any) -> None:
    # given a session flooding 100 low-priority jobs, two of them already published
    settings.JOBS_MAX_UNCLAIMED = 2
    _flood(principal, "flood", 100)
    assert dispatch_ready() == 2
    # when another session submits an urgent job, and the workers claim what was published
    urgent = _flood(principal, "urgent", 1, priority=50)
    _claim(_marked())
    # then the next pass publishes the urgent job first, not the flood's next one in line
    dispatch_ready(limit=1)
    assert _marked() == urgent


@pytest.mark.django_db
def test_messages_unclaimed_too_long_stop_counting(principal: Any, settings: Any) -> None:
    # given a full buffer whose messages were published 30 s ago and never claimed (lost)
    settings.JOBS_MAX_UNCLAIMED = 2
    old = _flood(principal, "lost", 2)
    Job.objects.filter(pk__in=old).update(dispatched_at=timezone.now() - timedelta(seconds=30), dispatch_token="t")
    fresh = _flood(principal, "fresh", 2)
    # when a pass runs, the buffer counts as empty: other work goes on
    assert dispatch_ready() == 2
    assert set(_marked()) >= set(fresh)
    # and the lost ones still wait for their redispatch window (not published twice yet)
    assert set(Job.objects.filter(pk__in=old).values_list("dispatch_token", flat=True)) == {"t"}


@pytest.mark.django_db
def test_room_gate_thresholds(settings: Any) -> None:
    settings.JOBS_MAX_UNCLAIMED = 8
    settings.JOBS_MAX_IN_FLIGHT = 200
    assert Room(in_flight=0, unclaimed=0).worth_a_pass
    assert Room(in_flight=10, unclaimed=4).worth_a_pass  # half the buffer free: refill
    assert not Room(in_flight=10, unclaimed=5).worth_a_pass  # workers still have messages waiting
    settings.JOBS_MAX_IN_FLIGHT = 1
    assert Room(in_flight=0, unclaimed=0).worth_a_pass  # a tiny global cap still admits
    assert not Room(in_flight=1, unclaimed=0).worth_a_pass


@pytest.mark.django_db(transaction=True)
def test_a_request_while_the_buffer_is_full_costs_one_count(principal: Any, settings: Any) -> None:
    # given a full buffer and more ready work
    settings.JOBS_MAX_UNCLAIMED = 2
    _flood(principal, "a", 5)
    assert dispatch_kick() == 2
    # when a finishing worker asks for a pass
    with CaptureQueriesContext(connection) as queries:
        assert dispatch_kick() == 0
    # then it only counted
    assert len(queries.captured_queries) == 1, [q["sql"] for q in queries.captured_queries]


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_coalesce_and_caps_hold_exactly(principal: Any, settings: Any) -> None:
    # given 30 sessions of ready work and a buffer of 6
    settings.JOBS_MAX_UNCLAIMED = 6
    for s in range(30):
        _flood(principal, f"c{s:02d}", 4, offset_us=s * 10)
    # when eight processes ask for a pass at the same instant, three times over
    for _ in range(3):
        results = race(8, lambda i: dispatch_kick())
        assert not [r for r in results if isinstance(r, Exception)], results
    # then exactly the buffer was published, each job once (passes never overlapped)
    assert len(_marked()) == 6
    assert sorted(published) == sorted(set(published)) and len(published) == 6


@pytest.mark.django_db(transaction=True)
def test_a_request_that_finds_a_pass_waiting_returns_and_loses_nothing(principal: Any, settings: Any) -> None:
    settings.JOBS_MAX_UNCLAIMED = 10
    # given a pass running elsewhere (RUN held on another connection)
    holder = connections.create_connection("default")
    holder.set_autocommit(True)
    with holder.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [LOCK_RUN])
    try:
        # and a request already waiting behind it (it took NEXT)
        first = _flood(principal, "w1", 1)
        waiter_result: list[Any] = []

        def wait_for_the_pass() -> None:
            try:
                waiter_result.append(dispatch_kick())
            finally:
                connection.close()

        waiter = threading.Thread(target=wait_for_the_pass)
        waiter.start()
        time.sleep(0.5)
        # when another job commits and its request comes
        second = _flood(principal, "w2", 1)
        t0 = time.monotonic()
        assert dispatch_kick() == 0
        # then that request returned at once
        assert time.monotonic() - t0 < 0.5
    finally:
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_RUN])
        holder.close()
    waiter.join(timeout=10)
    # and the waiting pass published both jobs, the later one included
    assert waiter_result == [2]
    assert set(published) == {*first, *second}
