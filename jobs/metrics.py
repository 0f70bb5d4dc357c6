"""Every Prometheus metric of the platform, defined once here.

The web server and the Celery workers are several processes (gunicorn workers, prefork pool
processes), so prometheus-client runs in multiprocess mode: each process writes its samples to
files under ``PROMETHEUS_MULTIPROC_DIR`` (``runplatform`` sets ``<var>/metrics`` for its children
and empties it at start; settings give the same default), and ``/metrics`` adds them up
(:func:`metrics_render`). Values that are a state of the database — jobs by status, the
dead-letter queue, the dispatch lag — are not counted in processes at all: they are computed from
the database at each scrape (:class:`DatabaseCollector`), so they are right whichever process
changed what.

Recorded from one place each: submissions and finishes from ``jobs.observe`` (called by the one
transition function), stage durations from the same place (a worker's run start is bound to its
task), refused messages from ``jobs.runner.refuse``, approval waits from the approvals service.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from django.db.models import Min
from django.utils import timezone
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from jobs.models import Job, JobStatus
from jobs.selectors import jobs_count_by_status

# The classic text format (legacy metric names, underscores only): every Prometheus version reads it.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

JOBS_SUBMITTED = Counter(
    "jobs_submitted_total", "Jobs created by a submit, by job type and the status they started in "
    "(queued, pending_approval, or blocked by policy or permissions).", ["job_type", "status"],
)
JOBS_FINISHED = Counter(
    "jobs_finished_total", "Jobs that reached a terminal status (succeeded, dead_lettered, cancelled), "
    "by job type and that status.", ["job_type", "status"],
)
JOB_TRANSITIONS = Counter(
    "job_transitions_total", "Status changes of jobs, by prior and new status.", ["from_status", "to_status"],
)
STAGE_DURATION = Histogram(
    "job_stage_duration_seconds", "Time one stage ran in a worker, from its claim to its outcome, by job type, "
    "stage and the status it left the job in.", ["job_type", "stage", "outcome"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
APPROVAL_WAIT = Histogram(
    "approval_wait_seconds", "Time from an approval request to its decision, by checkpoint and decision "
    "(approved, denied).", ["checkpoint", "decision"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, 172800),
)
MESSAGES_REFUSED = Counter(
    "job_messages_refused_total", "Stage messages a worker refused before any handler ran (duplicates, "
    "stale dispatch tokens, wrong status or stage, malformed messages), by reason.", ["reason"],
)
WEBHOOK_DELIVERIES = Counter(
    "webhook_deliveries_total", "Webhook delivery attempts, by outcome (delivered, pending = will retry, "
    "failed, stopped).", ["outcome"],
)


def webhook_attempted(*, outcome: str) -> None:
    WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()


def job_submitted(*, job_type: str, status: str) -> None:
    JOBS_SUBMITTED.labels(job_type=job_type, status=status).inc()


def job_transitioned(*, job_type: str, from_status: str, to_status: str, stage: str = "",
                     run_started_at: datetime | None = None, count: int = 1) -> None:
    """One status change (``count`` of them for a bulk move). A terminal status counts as finished;
    leaving ``running`` with a known run start observes the stage's duration."""
    JOB_TRANSITIONS.labels(from_status=from_status, to_status=to_status).inc(count)
    if to_status in (JobStatus.SUCCEEDED, JobStatus.DEAD_LETTERED, JobStatus.CANCELLED):
        JOBS_FINISHED.labels(job_type=job_type or "unknown", status=to_status).inc(count)
    if from_status == JobStatus.RUNNING and run_started_at is not None and stage:
        seconds = max(0.0, (timezone.now() - run_started_at).total_seconds())
        STAGE_DURATION.labels(job_type=job_type or "unknown", stage=stage, outcome=to_status).observe(seconds)


def message_refused(*, reason: str) -> None:
    # "not_claimable:<status>" keeps its status; anything else is one of a few fixed reasons.
    MESSAGES_REFUSED.labels(reason=reason[:64]).inc()


def approval_decided(*, checkpoint: str, decision: str, requested_at: datetime, decided_at: datetime) -> None:
    APPROVAL_WAIT.labels(checkpoint=checkpoint, decision=decision).observe(
        max(0.0, (decided_at - requested_at).total_seconds()))


# Scrape-time collectors of add-ons (approvals registers its analytics in AppConfig.ready).
_scrape_collectors: list[Collector] = []


def scrape_collector_register(collector: Collector) -> None:
    """Add a collector whose gauges are computed at each scrape of ``/metrics``."""
    if collector not in _scrape_collectors:
        _scrape_collectors.append(collector)


class DatabaseCollector(Collector):
    """Gauges computed from the database at scrape time (three small queries)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = jobs_count_by_status()
        by_status = GaugeMetricFamily("jobs_by_status", "Jobs in each status now.", labels=["status"])
        for status, n in counts.items():
            by_status.add_metric([status], n)
        yield by_status
        yield GaugeMetricFamily("jobs_dead_letter_size", "Jobs in the dead-letter queue now (dead_lettered).",
                                value=counts.get(JobStatus.DEAD_LETTERED, 0))
        now = timezone.now()
        oldest = Job.objects.filter(status=JobStatus.QUEUED, run_after__lte=now).aggregate(at=Min("run_after"))["at"]
        yield GaugeMetricFamily(
            "jobs_dispatch_lag_seconds", "Age of the oldest ready queued job (queued, its run_after passed, not yet "
            "claimed by a worker); 0 when none waits.",
            value=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        )


def metrics_render() -> bytes:
    """The Prometheus text exposition: every process's samples plus the database gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        samples = generate_latest(registry)
    else:
        samples = generate_latest(REGISTRY)
    database = CollectorRegistry()
    database.register(DatabaseCollector())
    for collector in _scrape_collectors:
        database.register(collector)
    return samples + generate_latest(database)


def process_metrics_render() -> bytes:
    """Only the samples of this host's processes (no database gauges): what ``serve_metrics``
    exposes on a worker host, where no web process reads the multiprocess directory."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def process_metrics_wsgi_app(*, token: str) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """A WSGI app answering every GET with :func:`process_metrics_render`; with a ``token``, only
    to ``Authorization: Bearer <token>`` (401 otherwise)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if token:
            scheme, _, given = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                    ("WWW-Authenticate", 'Bearer realm="metrics"')])
                return [b"a scrape token is required\n"]
        body = process_metrics_render()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))])
        return [body]

    return app
