"""Wake-ups: published after commit only, and one subscriber per process that survives a Redis restart."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
from django.db import transaction

from jobs.api.hub import WakeupHub
from jobs.wakeups import decode_ids, jobs_changed, wakeup_channel
from tests import harness

pytestmark = pytest.mark.integration


def _next_message(pubsub: Any, timeout: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            return message
    return None


@pytest.mark.django_db(transaction=True)
def test_wakeups_are_published_after_commit_and_never_for_a_rollback(settings: Any) -> None:
    server = harness.start_redis()
    try:
        settings.JOBS_WAKEUP_URL = server.url
        settings.JOBS_WAKEUP_CHANNEL = "test:jobs-changed"
        listener = redis.Redis.from_url(server.url).pubsub()
        listener.subscribe(wakeup_channel())
        assert _next_message(listener, 0.3) is None
        # inside a transaction nothing is published until it commits
        with transaction.atomic():
            jobs_changed(["job_a", "job_b"])
            assert _next_message(listener, 0.3) is None
        message = _next_message(listener)
        assert message is not None and decode_ids(message["data"]) == ["job_a", "job_b"]
        # a transaction that rolls back publishes nothing
        with pytest.raises(RuntimeError), transaction.atomic():
            jobs_changed(["job_c"])
            raise RuntimeError("rolled back")
        assert _next_message(listener, 0.5) is None
        # thousands of ids go out in chunks
        jobs_changed([f"job_{i}" for i in range(1200)])
        received: list[str] = []
        while (message := _next_message(listener, 0.5)) is not None:
            received += decode_ids(message["data"])
        assert received == [f"job_{i}" for i in range(1200)]
    finally:
        server.stop()


def test_one_subscriber_wakes_the_watches_and_comes_back_after_a_redis_restart(settings: Any) -> None:
    server = harness.start_redis()
    settings.JOBS_WAKEUP_URL = server.url
    settings.JOBS_WAKEUP_CHANNEL = "test:jobs-changed"
    # re-checks far away: every wake-up below comes from the subscriber
    settings.API_LIVE_RECHECK_S = settings.API_SSE_POLL_S = 600
    publisher = redis.Redis.from_url(server.url)

    async def until(predicate: Any, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.05)

    async def scenario() -> None:
        hub = WakeupHub()
        try:
            with hub.watch("job_a") as a, hub.watch("job_b") as b, hub.watch("job_a") as a2:
                await until(lambda: hub.subscribed)
                for watch in (a, b, a2):
                    watch.clear()
                # a wake-up for job_a wakes both of its watches and not job_b's
                publisher.publish(wakeup_channel(), "job_a unknown_job")
                assert await a.wait(5) and await a2.wait(5)
                assert not await b.wait(0.3)
                # Redis goes away and comes back on the same port
                server.stop()
                await until(lambda: not hub.subscribed)
                b.clear()
                restarted = harness.start_redis(server.port)
                try:
                    await until(lambda: hub.subscribed, timeout=30)
                    # after a reconnect every watch is woken: messages may have been missed
                    assert await b.wait(5)
                    b.clear()
                    redis.Redis.from_url(restarted.url).publish(wakeup_channel(), "job_b")
                    assert await b.wait(5)
                finally:
                    restarted.stop()
            assert hub.watch_count == 0
        finally:
            await hub.aclose()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
