"""Wake-ups: "these jobs changed", published after commit for the requests waiting on them.

Event streams and ``Prefer: wait`` requests (``jobs/api/live.py``) wait on a job without polling
it. Whatever changes a job — a transition (``jobs.transitions``, the one path every status change
takes) or a progress report (``jobs.worker.context``) — calls :func:`jobs_changed`; after the
transaction commits, the job ids are published on a Redis pub/sub channel
(``JOBS_WAKEUP_CHANNEL`` on ``JOBS_WAKEUP_URL``, the broker's Redis by default), where each web
process's one subscriber (``jobs.api.hub``) wakes the requests waiting on those jobs.

A wake-up carries no state: the woken request re-reads the job from the database, which stays
the truth. So a lost message costs a waiter at most one periodic re-check
(``API_LIVE_RECHECK_S``), and publishing never fails or slows a caller for long: errors are
logged, and after one the publisher stays quiet for a few seconds instead of waiting on a dead
Redis in every transition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from functools import partial

import redis
from django.conf import settings
from django.db import transaction
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

# Job ids per message: bulk cancels change thousands of jobs at once.
CHUNK = 500
# After a failed publish, skip publishing for this long (waiters fall back to their re-check).
QUIET_AFTER_FAILURE_S = 5.0

_lock = threading.Lock()
_client: redis.Redis | None = None
_client_url = ""
_quiet_until: dict[str, float] = {}  # by URL


def wakeup_channel() -> str:
    return str(settings.JOBS_WAKEUP_CHANNEL)


def encode_ids(job_ids: list[str]) -> str:
    return " ".join(job_ids)


def decode_ids(data: bytes | str) -> list[str]:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text.split()


def jobs_changed(job_ids: Iterable[str]) -> None:
    """Publish a wake-up for ``job_ids`` once the current transaction commits (at once outside one)."""
    if not settings.JOBS_WAKEUP_URL:
        return
    ids = [str(job_id) for job_id in job_ids]
    if ids:
        transaction.on_commit(partial(_publish, ids))


def _redis() -> redis.Redis:
    global _client, _client_url
    with _lock:
        if _client is None or _client_url != settings.JOBS_WAKEUP_URL:
            _client_url = settings.JOBS_WAKEUP_URL
            # Short timeouts and no retries: this runs after workers' transitions and in API
            # requests. redis-py's pool notices a fork (Celery's prefork pool) and opens new
            # connections in the child.
            _client = redis.Redis.from_url(
                settings.JOBS_WAKEUP_URL, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0),
            )
        return _client


def _publish(job_ids: list[str]) -> None:
    url = settings.JOBS_WAKEUP_URL
    if time.monotonic() < _quiet_until.get(url, 0.0):
        return
    try:
        client = _redis()
        if len(job_ids) <= CHUNK:
            client.publish(wakeup_channel(), encode_ids(job_ids))
            return
        with client.pipeline(transaction=False) as pipe:
            for start in range(0, len(job_ids), CHUNK):
                pipe.publish(wakeup_channel(), encode_ids(job_ids[start:start + CHUNK]))
            pipe.execute()
    except Exception:  # a wake-up is a hint; the waiters' re-check covers a lost one
        _quiet_until[url] = time.monotonic() + QUIET_AFTER_FAILURE_S
        logger.warning("could not publish job wake-ups; waiters fall back to their re-check", exc_info=True)
