"""Celery tasks. Thin: each takes ids and calls a service.

``GovernedStageTask`` is the one base class every stage task uses: it holds the reliability
defaults (explicit names, acks_late, reject_on_worker_lost, no Celery-level retries of domain
errors) and routes every message through :func:`jobs.worker.runner.stage_run`, which claims the job and
re-checks governance before any handler runs — a new task cannot skip it.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.signals import task_postrun, task_prerun
from django.db import InterfaceError, OperationalError, close_old_connections

from jobs.admission.dispatcher import dispatch_kick
from jobs.logcontext import bind_message, unbind
from jobs.services.control import cancels_enforce
from jobs.services.retention import retention_scheduled
from jobs.worker.outcomes import refuse
from jobs.worker.reaper import reap_expired_leases
from jobs.worker.runner import stage_run

logger = logging.getLogger(__name__)


@task_prerun.connect
@task_postrun.connect
def _recycle_db_connections(**_: Any) -> None:
    """Around every task, as Django does around every request: drop a connection that is past
    CONN_MAX_AGE or unusable, keep a healthy one (CELERY_DB_REUSE_MAX stops Celery's fixup from
    closing them all)."""
    close_old_connections()


@task_prerun.connect
def _bind_job(task: Any = None, args: Any = None, **_: Any) -> None:
    """Log lines of a stage task carry its job id and the trace id the dispatcher put in the
    message headers (the trace id a client sent with ``traceparent`` at submit)."""
    if isinstance(task, GovernedStageTask) and args and isinstance(args[0], str):
        request = task.request
        trace_id = getattr(request, "trace_id", None) or (getattr(request, "headers", None) or {}).get("trace_id")
        bind_message(job_id=args[0], trace_id=trace_id if isinstance(trace_id, str) else "")


@task_postrun.connect
def _unbind_job(**_: Any) -> None:
    unbind()


class GovernedStageTask(Task):  # type: ignore[type-arg]
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    typing = False  # arguments are validated by stage_run, which stamps what it refuses
    stage: str = ""
    max_retries = 30

    def run(self, *args: Any, **kwargs: Any) -> dict[str, str]:
        job_id = args[0] if len(args) > 0 else kwargs.get("job_id")
        # The dispatcher sends exactly (job_id, stage, token). Anything more was not written by
        # it: refuse (and stamp) rather than guess which fields to trust.
        extra = sorted(set(kwargs) - {"job_id", "stage", "token"})
        if len(args) > 3 or extra:
            return refuse(
                job_id=str(job_id)[:64] if isinstance(job_id, str) and job_id else "(malformed)",
                reason="malformed_message", worker=self.request.hostname or "unknown",
                details={"extra_args": max(0, len(args) - 3), "extra_kwargs": [k[:64] for k in extra[:10]]},
            ).as_dict()
        stage = args[1] if len(args) > 1 else kwargs.get("stage")
        token = args[2] if len(args) > 2 else kwargs.get("token")
        try:
            outcome = stage_run(
                job_id=job_id,
                stage=stage,
                token=token,
                worker=self.request.hostname or "unknown",
                celery_task_id=self.request.id or "",
                task_stage=self.stage,
            )
        except (OperationalError, InterfaceError) as exc:
            # The database is away: back off and try this message again. The job row is
            # untouched (or its lease will expire), so nothing runs twice.
            countdown = min(30, 2 ** min(self.request.retries, 5))
            logger.warning("database unavailable in %s; retrying in %ss", self.name, countdown)
            raise self.retry(exc=exc, countdown=countdown) from exc
        return outcome.as_dict()


@shared_task(bind=True, base=GovernedStageTask, name="jobs.intake", stage="intake")
def intake(self: GovernedStageTask, *args: Any, **kwargs: Any) -> dict[str, str]:
    return GovernedStageTask.run(self, *args, **kwargs)


@shared_task(bind=True, base=GovernedStageTask, name="jobs.execute", stage="execute")
def execute(self: GovernedStageTask, *args: Any, **kwargs: Any) -> dict[str, str]:
    return GovernedStageTask.run(self, *args, **kwargs)


@shared_task(bind=True, base=GovernedStageTask, name="jobs.finalize", stage="finalize")
def finalize(self: GovernedStageTask, *args: Any, **kwargs: Any) -> dict[str, str]:
    return GovernedStageTask.run(self, *args, **kwargs)


@shared_task(name="jobs.dispatch_tick", ignore_result=True, acks_late=False)
def dispatch_tick() -> int:
    """Beat backstop: promote due retries and publish whatever is ready (a coalesced pass that
    runs even when the unclaimed buffer is only slightly short)."""
    return dispatch_kick(force=True, promote=True)


@shared_task(name="jobs.reap_leases", ignore_result=True, acks_late=False)
def reap_leases() -> dict[str, int]:
    return reap_expired_leases()


@shared_task(name="jobs.enforce_cancels", ignore_result=True, acks_late=False)
def enforce_cancels() -> int:
    """Beat: terminate running jobs that ignored a cancel for longer than JOBS_CANCEL_GRACE_S."""
    return cancels_enforce()


@shared_task(name="jobs.retention", ignore_result=True, acks_late=False)
def retention() -> dict[str, object]:
    """Beat, daily: retention of terminal jobs older than JOBS_RETENTION_DAYS (0: off); the
    service logs what it removed."""
    report = retention_scheduled()
    return report.as_dict() if report is not None else {}
