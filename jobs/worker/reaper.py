"""The reaper: running jobs whose lease expired (their worker died or hung).

A running job holds a lease (``lease_expires_at``) that its worker's :class:`jobs.worker.context.RunMonitor`
renews every ``JOBS_HEARTBEAT_S``; the beat runs this every ``JOBS_REAPER_TICK_S``. A lease that
ran out means the worker process is gone (SIGKILL, OOM, host lost) or was killed by Celery's
hard time limit. The cause is told apart by how long the run stayed alive: a run whose last
heartbeat came after its soft limit (``max_runtime_s``) was still running when it should have
stopped, so it is a ``timeout``; anything else is ``worker_lost``.

For each expired lease, in one guarded transition (first rule that applies):
1. a ``finalize`` whose commit does not go through the effect ledger may have had its effect:
   ``dead_lettered`` (``worker_lost``) for a human to check;
2. a stage claimed ``JOBS_MAX_CLAIMS_PER_STAGE`` times without ever finishing is ``poison``:
   ``dead_lettered`` instead of crashing workers in a loop;
3. a timeout of a job type whose ``RetryPolicy.retry_timeouts`` is off: ``dead_lettered``
   (``timeout``);
4. the attempt budget is spent: ``dead_lettered`` (``timeout`` or ``retries_exhausted``);
5. otherwise the stage is safe to repeat: ``retry_scheduled`` with the job type's backoff (the
   attempt counted), promoted by the dispatch tick like any other retry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.events import Event
from audit.services import ChainHead
from jobs.admission.dispatcher import dispatch_soon
from jobs.errors import UnknownJobType
from jobs.models import ErrorClass, Job, JobRun, JobStatus, RunOutcome, Stage
from jobs.registry import JobType, registry
from jobs.transitions import job_transition

logger = logging.getLogger(__name__)


def lease_verdict(*, row: Mapping[str, Any], job_type: JobType | None, alive_for_s: float) -> tuple[str, str, str]:
    """(to status, error class, cause) for one expired lease; see the module docstring."""
    cause = ErrorClass.TIMEOUT if alive_for_s >= row["max_runtime_s"] else ErrorClass.WORKER_LOST
    idempotent_commit = job_type.idempotent_commit if job_type is not None else False
    if row["stage"] == Stage.FINALIZE and not idempotent_commit:
        return JobStatus.DEAD_LETTERED, ErrorClass.WORKER_LOST, cause
    if row["claims"] >= settings.JOBS_MAX_CLAIMS_PER_STAGE:
        return JobStatus.DEAD_LETTERED, ErrorClass.POISON, cause
    if cause == ErrorClass.TIMEOUT and job_type is not None and not job_type.retry.retry_timeouts:
        return JobStatus.DEAD_LETTERED, ErrorClass.TIMEOUT, cause
    if row["attempts"] >= row["max_attempts"]:
        final = ErrorClass.TIMEOUT if cause == ErrorClass.TIMEOUT else ErrorClass.RETRIES_EXHAUSTED
        return JobStatus.DEAD_LETTERED, final, cause
    return JobStatus.RETRY_SCHEDULED, cause, cause


def reap_expired_leases(*, limit: int = 200) -> dict[str, int]:
    """Settle up to ``limit`` running jobs whose lease expired; return counts by outcome."""
    now = timezone.now()
    counts = {"requeued": 0, "dead_lettered": 0}
    expired = list(
        Job.objects.filter(status=JobStatus.RUNNING, lease_expires_at__lt=now)
        .order_by("lease_expires_at")
        .values("id", "job_type", "stage", "attempts", "max_attempts", "claims", "current_run_id",
                "max_runtime_s", "lease_owner", "heartbeat_at", "chain_seq", "chain_hash")[:limit]
    )
    for row in expired:
        job_type: JobType | None
        try:
            job_type = registry.get(row["job_type"])
        except UnknownJobType:
            job_type = None
        run = JobRun.objects.filter(pk=row["current_run_id"]).first()
        started = run.started_at if run else now
        # The last sign of life is the last lease renewal (heartbeat_at), not "now": the reaper
        # may come along long after the process died.
        alive_for = max(0.0, ((row["heartbeat_at"] or started) - started).total_seconds())
        to, error_class, cause = lease_verdict(row=row, job_type=job_type, alive_for_s=alive_for)
        details = {
            "run_id": row["current_run_id"],
            "stage": row["stage"],
            "attempt": row["attempts"],
            "retry_count": row["attempts"],
            "claims": row["claims"],
            "worker": row["lease_owner"],
            "cause": cause,
            "alive_for_s": round(alive_for, 3),
            "error_class": error_class,
        }
        updates: dict[str, Any] = {
            "lease_expires_at": None,
            "lease_owner": "",
            "error_class": error_class,
            "error": f"lease expired ({cause}) after {alive_for:.1f}s alive on {row['lease_owner']}",
        }
        if to == JobStatus.RETRY_SCHEDULED:
            delay = job_type.retry.backoff_s(row["attempts"]) if job_type is not None else 0.0
            updates["dispatched_at"] = None
            updates["run_after"] = now + timedelta(seconds=delay)
            details["backoff_s"] = round(delay, 3)
        else:
            updates["reason"] = error_class
        with transaction.atomic():
            prior = job_transition(
                job_id=row["id"], to=to, allowed_from=[JobStatus.RUNNING],
                event=Event.LEASE_EXPIRED if to == JobStatus.RETRY_SCHEDULED else Event.DEAD_LETTERED,
                details=details,
                updates=updates,
                # A heartbeat that renewed the lease since the read above wins: not expired.
                expect={"current_run_id": row["current_run_id"], "lease_expires_at__lt": now},
                head=ChainHead(row["chain_seq"], row["chain_hash"]),
            )
            if prior is None:
                continue
            JobRun.objects.filter(pk=row["current_run_id"], outcome=RunOutcome.RUNNING).update(
                outcome=RunOutcome.LOST, finished_at=now, error_class=cause,
                error=f"lease expired: {cause}",
            )
            counts["requeued" if to == JobStatus.RETRY_SCHEDULED else "dead_lettered"] += 1
            dispatch_soon()
    if any(counts.values()):
        logger.info("reaper: %s", counts)
    return counts
