"""The dispatcher: the database is the truth, Celery carries only admitted work.

``dispatch_ready`` admits ready jobs and publishes them after commit. It runs after every
submit and every stage finish, and on a beat tick as a backstop, so a lost message or a broker
outage delays work but never loses it. Several dispatchers at once are safe: candidate rows are
locked with ``SELECT … FOR UPDATE SKIP LOCKED`` (PostgreSQL; SQLite serialises writers anyway),
and the claim in the worker refuses any duplicate message.

Steps of one pass:
1. Count in-flight jobs (published and not finished). Room = JOBS_MAX_IN_FLIGHT − in flight.
2. Lock up to ``room`` ready rows: status ``queued``, ``run_after`` passed, not yet published
   (or published longer than JOBS_REDISPATCH_AFTER_S ago and still unclaimed — the message may
   have died with a broker restart), ordered by priority, then age.
3. Mark them with ``dispatched_at`` and a fresh random dispatch token in one UPDATE.
4. After commit, publish one message per job to its stage's queue, with the token. A job whose
   publish fails is unmarked, so the next pass publishes it again.
5. Move ``retry_scheduled`` jobs whose backoff has passed back to ``queued`` (each stamped).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from jobs.models import Job, JobStatus
from jobs.transitions import job_transition

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Admitted:
    job_id: str
    stage: str
    token: str
    max_runtime_s: int
    trace_id: str
    scope: str


def stage_queue(stage: str, scope: str) -> str:
    """The queue a stage message goes to: ``<stage>``, or ``<stage>.<scope>`` for a scope that
    has its own workers (``JOBS_SCOPE_QUEUES``)."""
    if scope in settings.JOBS_SCOPE_QUEUES:
        return f"{stage}.{scope}"
    return stage


def publish(admitted: list[Admitted]) -> list[str]:
    """Publish stage messages; return the ids that could not be published."""
    from config.celery import app

    failed: list[str] = []
    grace = settings.JOBS_TIME_LIMIT_GRACE_S
    for item in admitted:
        try:
            app.send_task(
                f"jobs.{item.stage}",
                args=[item.job_id, item.stage, item.token],
                queue=stage_queue(item.stage, item.scope),
                soft_time_limit=item.max_runtime_s,
                time_limit=item.max_runtime_s + grace,
                headers={"trace_id": item.trace_id},
            )
        except Exception:
            logger.warning("publish failed for %s; it stays queued", item.job_id, exc_info=True)
            failed.append(item.job_id)
    return failed


def _unmark(admitted: list[Admitted], failed_ids: list[str]) -> None:
    tokens = {a.job_id: a.token for a in admitted}
    for job_id in failed_ids:
        try:
            Job.objects.filter(
                pk=job_id, status=JobStatus.QUEUED, dispatch_token=tokens[job_id]
            ).update(dispatched_at=None)
        except Exception:  # the database may be down too; the redispatch window covers it
            logger.warning("could not unmark %s after failed publish", job_id, exc_info=True)


def promote_due_retries(*, limit: int = 500) -> int:
    """retry_scheduled → queued for jobs whose backoff has passed."""
    now = timezone.now()
    ids = list(
        Job.objects.filter(status=JobStatus.RETRY_SCHEDULED, run_after__lte=now)
        .order_by("run_after")
        .values_list("id", flat=True)[:limit]
    )
    moved = 0
    for job_id in ids:
        if job_transition(
            job_id=job_id,
            to=JobStatus.QUEUED,
            allowed_from=[JobStatus.RETRY_SCHEDULED],
            event="retry_due",
            updates={"dispatched_at": None},
        ):
            moved += 1
    return moved


def in_flight_count() -> int:
    return Job.objects.filter(
        Q(status=JobStatus.RUNNING) | Q(status=JobStatus.QUEUED, dispatched_at__isnull=False)
    ).count()


def dispatch_ready(*, limit: int | None = None, promote: bool = False) -> int:
    """Admit and publish ready jobs; return how many were published."""
    if promote:
        promote_due_retries()
    now = timezone.now()
    batch = limit or settings.JOBS_DISPATCH_BATCH
    admitted: list[Admitted] = []
    with transaction.atomic():
        room = settings.JOBS_MAX_IN_FLIGHT - in_flight_count()
        if room <= 0:
            return 0
        stale = now - timedelta(seconds=settings.JOBS_REDISPATCH_AFTER_S)
        rows: list[dict[str, Any]] = list(
            Job.objects.select_for_update(skip_locked=True)  # type: ignore[arg-type]
            .filter(status=JobStatus.QUEUED, run_after__lte=now)
            .filter(Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=stale))
            .order_by("-priority", "run_after", "created_at")
            .values("id", "stage", "max_runtime_s", "trace_id", "scope")[: min(batch, room)]
        )
        if not rows:
            return 0
        token = secrets.token_urlsafe(16)
        Job.objects.filter(pk__in=[r["id"] for r in rows], status=JobStatus.QUEUED).update(
            dispatched_at=now, dispatch_token=token
        )
        admitted = [
            Admitted(r["id"], r["stage"], token, r["max_runtime_s"], r["trace_id"], r["scope"])
            for r in rows
        ]

        def _after_commit() -> None:
            failed = publish(admitted)
            if failed:
                _unmark(admitted, failed)

        transaction.on_commit(_after_commit)
    return len(admitted)


def dispatch_soon() -> None:
    """Run a dispatch pass after the current transaction commits (or now, outside one).

    Errors are logged, never raised: the beat tick is the backstop.
    """

    def _run() -> None:
        try:
            dispatch_ready()
        except Exception:
            logger.warning("dispatch after commit failed; the beat tick will retry", exc_info=True)

    transaction.on_commit(_run)
