"""The reaper: running jobs whose lease expired (their worker died or hung).

For each expired lease, in one guarded transition:
- a stage safe to repeat (intake, execute, or finalize whose commit goes through the effect
  ledger) goes back to ``queued`` with the attempt counted — or to ``dead_lettered`` when the
  attempt budget is spent (``retries_exhausted``, or ``timeout`` when it ran past its hard limit);
- a stage claimed ``JOBS_MAX_CLAIMS_PER_STAGE`` times without finishing is ``poison``;
- a ``finalize`` whose effect may have happened and cannot be de-duplicated is dead-lettered as
  ``worker_lost`` for a human to check.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs.dispatcher import dispatch_soon
from jobs.errors import UnknownJobType
from jobs.models import ErrorClass, Job, JobRun, JobStatus, RunOutcome, Stage
from jobs.registry import registry
from jobs.transitions import job_transition

logger = logging.getLogger(__name__)


def reap_expired_leases(*, limit: int = 200) -> dict[str, int]:
    now = timezone.now()
    counts = {"requeued": 0, "dead_lettered": 0}
    expired = list(
        Job.objects.filter(status=JobStatus.RUNNING, lease_expires_at__lt=now)
        .order_by("lease_expires_at")
        .values("id", "job_type", "stage", "attempts", "max_attempts", "claims", "current_run_id",
                "max_runtime_s", "lease_owner")[:limit]
    )
    for row in expired:
        try:
            job_type = registry.get(row["job_type"])
            idempotent_commit = job_type.idempotent_commit
        except UnknownJobType:
            idempotent_commit = False
        run = JobRun.objects.filter(pk=row["current_run_id"]).first()
        ran_for = (now - run.started_at).total_seconds() if run else 0.0
        hard_limit = row["max_runtime_s"] + settings.JOBS_TIME_LIMIT_GRACE_S
        cause = ErrorClass.TIMEOUT if ran_for >= hard_limit else ErrorClass.WORKER_LOST
        details = {
            "run_id": row["current_run_id"],
            "stage": row["stage"],
            "attempt": row["attempts"],
            "worker": row["lease_owner"],
            "cause": cause,
            "ran_for_s": round(ran_for, 3),
        }
        if row["stage"] == Stage.FINALIZE and not idempotent_commit:
            to, error_class = JobStatus.DEAD_LETTERED, ErrorClass.WORKER_LOST
        elif row["claims"] >= settings.JOBS_MAX_CLAIMS_PER_STAGE:
            to, error_class = JobStatus.DEAD_LETTERED, ErrorClass.POISON
        elif row["attempts"] >= row["max_attempts"]:
            to = JobStatus.DEAD_LETTERED
            error_class = ErrorClass.TIMEOUT if cause == ErrorClass.TIMEOUT else ErrorClass.RETRIES_EXHAUSTED
        else:
            to, error_class = JobStatus.QUEUED, cause
        with transaction.atomic():
            updates: dict[str, object] = {
                "lease_expires_at": None,
                "lease_owner": "",
                "error_class": error_class,
                "error": f"lease expired ({cause}) after {ran_for:.1f}s on {row['lease_owner']}",
            }
            if to == JobStatus.QUEUED:
                updates["dispatched_at"] = None
                updates["run_after"] = now
            else:
                updates["reason"] = error_class
            prior = job_transition(
                job_id=row["id"], to=to, allowed_from=[JobStatus.RUNNING],
                event="lease_expired" if to == JobStatus.QUEUED else "dead_lettered",
                details={**details, "error_class": error_class},
                updates=updates,
                expect={"current_run_id": row["current_run_id"], "lease_expires_at__lt": now + timedelta(0)},
            )
            if prior is None:
                continue
            JobRun.objects.filter(pk=row["current_run_id"], outcome=RunOutcome.RUNNING).update(
                outcome=RunOutcome.LOST, finished_at=now, error_class=cause,
                error="worker lost or hard time limit hit",
            )
            counts["requeued" if to == JobStatus.QUEUED else "dead_lettered"] += 1
            dispatch_soon()
    if any(counts.values()):
        logger.info("reaper: %s", counts)
    return counts
