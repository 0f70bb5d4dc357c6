"""Control of admitted work: cancel (one or many), forced termination, pause and resume.

The REST API, the admin task monitor and the ``cancel_jobs`` command all call these services.

Cancelling is set-based: jobs that have not started (``queued``, ``retry_scheduled``,
``pending_approval``) become ``cancelled`` at once through :func:`jobs_transition_bulk` — one
guarded UPDATE per prior status and one INSERT of stamps — and any message of theirs still in
the broker is refused by the claim. Running jobs get ``cancel_requested_at``: the worker's run
monitor sees it within ``JOBS_CANCEL_POLL_S`` and the handler stops at its next
``ctx.check_cancelled()`` (the runner stamps ``mode: cooperative``). A handler that ignores it
is terminated after ``JOBS_CANCEL_GRACE_S`` by :func:`cancels_enforce` (beat task
``jobs.enforce_cancels``): Celery ``revoke(terminate=True)`` and ``running → cancelled`` with
``mode: forced``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from audit.events import Event
from audit.services import SYSTEM_ACTOR, ChainHead
from common.errors import DomainError
from jobs.admission.dispatcher import dispatch_soon
from jobs.chain import jobs_stamp_bulk
from jobs.hooks import approval_gate
from jobs.models import ErrorClass, Job, JobRun, JobStatus, JobTypeControl, RunOutcome, SessionControl
from jobs.transitions import job_transition, jobs_transition_bulk

logger = logging.getLogger(__name__)

# Statuses a cancel ends at once (nothing of the job is executing).
CANCEL_AT_ONCE = (JobStatus.QUEUED, JobStatus.RETRY_SCHEDULED, JobStatus.PENDING_APPROVAL)


@dataclass
class CancelResult:
    """Ids cancelled at once (grouped by prior status) and ids of running jobs asked to stop."""

    cancelled: dict[str, list[str]] = field(default_factory=dict)
    cancelling: list[str] = field(default_factory=list)

    @property
    def cancelled_count(self) -> int:
        return sum(len(ids) for ids in self.cancelled.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "cancelled": self.cancelled_count,
            "cancelling": len(self.cancelling),
            "by_status": {status: len(ids) for status, ids in self.cancelled.items()},
        }


def jobs_cancel(*, jobs: QuerySet[Job], actor: str, reason: str = "cancelled") -> CancelResult:
    """Cancel every cancellable job in ``jobs`` in one transaction.

    Steps: (1) ``queued``/``retry_scheduled``/``pending_approval`` → ``cancelled`` via
    :func:`jobs_transition_bulk` (stamps in bulk), and their pending approval requests →
    ``cancelled``; (2) running jobs not yet asked get ``cancel_requested_at`` (guarded on
    ``status=running``) and a ``cancel_requested`` stamp each, in bulk; (3) a dispatch pass
    after commit, since slots may have been freed.
    """
    now = timezone.now()
    result = CancelResult()
    with transaction.atomic():
        result.cancelled = jobs_transition_bulk(
            jobs=jobs,
            to=JobStatus.CANCELLED,
            allowed_from=CANCEL_AT_ONCE,
            event=Event.CANCELLED,
            actor=actor,
            details={"mode": "before_start", "reason": reason},
            updates={"reason": reason, "error_class": ErrorClass.CANCELLED},
        )
        pending = result.cancelled.get(JobStatus.PENDING_APPROVAL, [])
        if pending:
            approval_gate().close_for_jobs(job_ids=pending, now=now)
        locked = list(
            jobs.filter(status=JobStatus.RUNNING, cancel_requested_at__isnull=True)
            .order_by("pk").select_for_update(of=("self",)).values_list("pk", "chain_seq", "chain_hash")
        )
        running = [row[0] for row in locked]
        if running:
            Job.objects.filter(pk__in=running, status=JobStatus.RUNNING).update(
                cancel_requested_at=now, updated_at=now
            )
            details = {"reason": reason, "grace_s": settings.JOBS_CANCEL_GRACE_S}
            jobs_stamp_bulk([
                {"job_id": job_id, "event": Event.CANCEL_REQUESTED, "actor": actor,
                 "from_status": JobStatus.RUNNING, "to_status": JobStatus.RUNNING, "details": details, "at": now}
                for job_id in running
            ], heads={pk: ChainHead(seq, digest) for pk, seq, digest in locked})
        # Running jobs asked before (a repeated cancel) are still "cancelling".
        already = jobs.filter(status=JobStatus.RUNNING, cancel_requested_at__lt=now)
        result.cancelling = running + list(already.values_list("pk", flat=True))
        if result.cancelled_count:
            dispatch_soon()
    return result


def job_cancel(*, job: Job, actor: str, reason: str = "cancelled") -> tuple[str, bool]:
    """Cancel one job; return (its status now, whether a running handler is being stopped).

    Raises ``not_cancellable`` (409) for a job that already ended.
    """
    result = jobs_cancel(jobs=Job.objects.filter(pk=job.pk), actor=actor, reason=reason)
    if result.cancelled_count:
        return JobStatus.CANCELLED, False
    if result.cancelling:
        return JobStatus.RUNNING, True
    current = Job.objects.filter(pk=job.pk).values_list("status", flat=True).first() or job.status
    raise DomainError("not_cancellable", f"The job is {current}; it cannot be cancelled.", status=current)


def _revoke(task_ids: list[str]) -> None:
    """Terminate the worker processes running these Celery tasks.

    ``terminate=True`` makes each worker that holds the task kill the pool process running it
    (celery/worker/control.py ``revoke`` → ``_revoke`` → ``request.terminate``, which calls
    ``pool.terminate_job(pid, signal)``); the id is also remembered as revoked, so a redelivered
    copy of the message is discarded (celery/worker/request.py ``revoked``).
    """
    if not task_ids:
        return
    try:
        current_app.control.revoke(task_ids, terminate=True, signal=settings.JOBS_CANCEL_SIGNAL)
    except Exception:  # the job is already cancelled in the database; the lease ends the rest
        logger.warning("revoke of %s failed", task_ids, exc_info=True)


def cancels_enforce(*, now: datetime | None = None, limit: int = 200) -> int:
    """Force-cancel running jobs whose cancel grace has run out; return how many.

    Steps for each job: (1) ``running → cancelled`` (``mode: forced``) guarded on the run id it
    had, so a handler finishing at the same moment wins or loses cleanly; (2) its run is closed
    as cancelled; (3) after commit, the run's Celery task is revoked with terminate — the
    database says cancelled before the process dies, so the redelivered message (``acks_late``,
    ``reject_on_worker_lost``) is refused by the claim.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.JOBS_CANCEL_GRACE_S)
    rows = list(
        Job.objects.filter(status=JobStatus.RUNNING, cancel_requested_at__lte=cutoff)
        .order_by("cancel_requested_at")
        .values("id", "current_run_id", "cancel_requested_at", "chain_seq", "chain_hash")[:limit]
    )
    forced = 0
    for row in rows:
        run = JobRun.objects.filter(pk=row["current_run_id"]).values("celery_task_id", "worker").first()
        task_id = run["celery_task_id"] if run else ""
        worker = run["worker"] if run else ""
        with transaction.atomic():
            prior = job_transition(
                job_id=row["id"], to=JobStatus.CANCELLED, allowed_from=[JobStatus.RUNNING],
                event=Event.CANCELLED, actor=SYSTEM_ACTOR,
                details={"mode": "forced", "run_id": row["current_run_id"], "celery_task_id": task_id,
                         "worker": worker, "signal": settings.JOBS_CANCEL_SIGNAL,
                         "grace_s": settings.JOBS_CANCEL_GRACE_S},
                updates={"reason": "cancelled", "error_class": ErrorClass.CANCELLED},
                expect={"current_run_id": row["current_run_id"]},
                head=ChainHead(row["chain_seq"], row["chain_hash"]),
            )
            if prior is None:
                continue
            JobRun.objects.filter(pk=row["current_run_id"], outcome=RunOutcome.RUNNING).update(
                outcome=RunOutcome.CANCELLED, finished_at=now, error="terminated after cancel grace",
                error_class=ErrorClass.CANCELLED,
            )
            if task_id:
                transaction.on_commit(partial(_revoke, [task_id]))
            dispatch_soon()
        forced += 1
    return forced


# --- pause and resume ---------------------------------------------------------------------------


def session_pause(*, principal_id: int, session_id: str, until: datetime | None = None) -> SessionControl:
    """Stop admitting the session's queued jobs (running ones finish). ``until``: resume then."""
    control, _ = SessionControl.objects.update_or_create(
        principal_id=principal_id, session_id=session_id,
        defaults={"paused": until is None, "paused_until": until, "updated_at": timezone.now()},
    )
    return control


def session_resume(*, principal_id: int, session_id: str) -> SessionControl:
    """Admit the session's queued jobs again, now."""
    control, _ = SessionControl.objects.update_or_create(
        principal_id=principal_id, session_id=session_id,
        defaults={"paused": False, "paused_until": None, "updated_at": timezone.now()},
    )
    dispatch_soon()
    return control


def session_set_concurrency(*, principal_id: int, session_id: str, max_concurrency: int | None) -> SessionControl:
    control, _ = SessionControl.objects.update_or_create(
        principal_id=principal_id, session_id=session_id,
        defaults={"max_concurrency": max_concurrency, "updated_at": timezone.now()},
    )
    dispatch_soon()
    return control


def job_type_pause(*, job_type: str, until: datetime | None = None) -> JobTypeControl:
    control, _ = JobTypeControl.objects.update_or_create(
        job_type=job_type,
        defaults={"paused": until is None, "paused_until": until, "updated_at": timezone.now()},
    )
    return control


def job_type_resume(*, job_type: str) -> JobTypeControl:
    control, _ = JobTypeControl.objects.update_or_create(
        job_type=job_type, defaults={"paused": False, "paused_until": None, "updated_at": timezone.now()},
    )
    dispatch_soon()
    return control
