"""Bare Celery: the baseline the platform is measured against.

A minimal Celery app with no Django, no database and no governance, on the same broker and with
the same reliability settings as the platform (``config/settings.py``: acks_late,
reject_on_worker_lost, prefetch 1, JSON only, results ignored, the same Redis transport options,
task events on). The harness compares these settings with the platform's before every run
(``bench.harness.check_mirrored_settings``) and refuses to run if they drift apart.

Its one task does nothing but record three timestamps in the broker's Redis database, so the
bench process can compute throughput (last finish) and publish→start latency::

    celery -A bench.bare_app worker -Q bench_bare -P prefork -c 2
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/3")
QUEUE = "bench_bare"
# demo.noop's max_runtime_s and the platform's grace: the platform sends these limits with
# every stage message (jobs.admission.dispatcher.publish), so the bare messages carry them too.
SOFT_TIME_LIMIT_S = 30
TIME_LIMIT_S = SOFT_TIME_LIMIT_S + int(os.environ.get("JOBS_TIME_LIMIT_GRACE_S", "10"))


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, str(default)))


def _env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, "1" if default else "0").strip().lower() in {"1", "true", "yes", "on"}


app = Celery("bench_bare", broker=BROKER_URL, set_as_current=False)
app.conf.update(
    # Same environment variables and defaults as config/settings.py reads.
    broker_transport_options={
        "visibility_timeout": _env_int("CELERY_VISIBILITY_TIMEOUT_S", 3600),
        "socket_connect_timeout": _env_float("CELERY_BROKER_CONNECT_TIMEOUT_S", 3.0),
        "socket_timeout": _env_float("CELERY_BROKER_SOCKET_TIMEOUT_S", 3.0),
        "retry_on_timeout": _env_bool("CELERY_BROKER_RETRY_ON_TIMEOUT", False),
        "health_check_interval": 10,
    },
    broker_connection_retry_on_startup=True,
    result_backend=None,
    task_ignore_result=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_track_started=False,
    worker_send_task_events=_env_bool("CELERY_WORKER_SEND_TASK_EVENTS", True),
    task_send_sent_event=_env_bool("CELERY_TASK_SEND_SENT_EVENT", True),
    task_default_queue=QUEUE,
    task_publish_retry=True,
    task_publish_retry_policy={
        "max_retries": _env_int("CELERY_PUBLISH_MAX_RETRIES", 1),
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.5,
    },
    timezone="UTC",
)

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    # Created lazily, so each prefork child opens its own connection after the fork.
    global _client
    if _client is None:
        _client = redis.Redis.from_url(BROKER_URL)
    return _client


def result_key(tag: str) -> str:
    return f"bench:bare:{tag}"


@app.task(name="bench.bare.noop", ignore_result=True)
def noop(published_at: float, tag: str) -> None:
    """Record ``published_at start finish`` (epoch seconds) under ``bench:bare:<tag>``."""
    started = time.time()
    _redis().rpush(result_key(tag), f"{published_at:.6f} {started:.6f} {time.time():.6f}")


def publish(tag: str) -> None:
    """Publish one no-op, stamped with the time just before the publish."""
    noop.apply_async(args=(time.time(), tag), queue=QUEUE, soft_time_limit=SOFT_TIME_LIMIT_S,
                     time_limit=TIME_LIMIT_S)


def read_results(client: redis.Redis, tag: str) -> list[tuple[float, float, float]]:
    """All ``(published, started, finished)`` triples recorded under ``tag``."""
    out: list[tuple[float, float, float]] = []
    for raw in client.lrange(result_key(tag), 0, -1):
        pub, start, end = (float(x) for x in raw.split())
        out.append((pub, start, end))
    return out


def count_results(client: redis.Redis, tag: str) -> int:
    return int(client.llen(result_key(tag)))

