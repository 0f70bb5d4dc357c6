"""How a claimed run ends: every outcome is one guarded transition with its stamp.

All outcomes share one frame, :func:`_settle`: in one transaction, move the job from
``running`` (only if this run still owns it: ``current_run_id``) to its next status while
releasing the lease, close the run's row, and — when the move happened — run the outcome's own
follow-up (open an approval request) and a dispatch pass after commit. A move that matches no
row means the job changed meanwhile (a forced cancel, the reaper): the run is closed as lost
and nothing else happens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit.events import Event
from audit.services import ChainHead
from governance.secrets import decrypt_secrets, secret_strings, secrets_scrub
from jobs.admission.dispatcher import dispatch_soon
from jobs.chain import head_of, job_stamp, stamp_orphan
from jobs.hooks import approval_open
from jobs.metrics import message_refused
from jobs.models import ErrorClass, Job, JobRun, JobStatus, RunOutcome, Stage
from jobs.registry import JobType
from jobs.services.submit import next_stage_status
from jobs.transitions import job_transition_stamped
from jobs.worker.context import JobContext

logger = logging.getLogger(__name__)

# Written with every outcome: the run no longer holds the job.
_LEASE_RELEASED: dict[str, Any] = {"lease_expires_at": None, "lease_owner": ""}


@dataclass
class StageOutcome:
    job_id: str
    outcome: str  # refused | succeeded | advanced | retry | dead_lettered | cancelled | pending_approval | lost
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"job_id": self.job_id, "outcome": self.outcome, "detail": self.detail}


def worker_actor(worker: str) -> str:
    return f"worker:{worker}"


def refuse(*, job_id: str, reason: str, worker: str, details: dict[str, Any] | None = None,
           head: ChainHead | None = None, no_job: bool = False) -> StageOutcome:
    """Stamp a refused message. The job (if any) is not changed, but its chain is: ``head`` is
    the chain head read with the job; ``no_job`` when the id is known to name no job."""
    stamp: dict[str, Any] = {"job_id": job_id, "event": Event.CLAIM_REFUSED, "actor": worker_actor(worker),
                             "details": {"reason": reason, "worker": worker, **(details or {})}}
    if no_job:
        stamp_orphan(**stamp)
    else:
        job_stamp(**stamp, head=head)
    logger.warning("refused message for %s: %s", job_id, reason)
    message_refused(reason=reason)
    return StageOutcome(job_id, "refused", reason)


def _tools_used(ctx: JobContext | None) -> list[str]:
    return [c["name"] for c in ctx.tool_calls] if ctx else []


def _run_details(job: Job, run: JobRun, ctx: JobContext | None, worker: str) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "stage": run.stage,
        "attempt": run.attempt,
        "worker": worker,
        "model_version": ctx.model_version if ctx else settings.JOBS_MODEL_VERSION,
        "tools_used": _tools_used(ctx),
        "trace_id": job.trace_id,
    }


def _settle(
    job: Job, run: JobRun, *, to: str, event: str, details: dict[str, Any], updates: dict[str, Any],
    run_outcome: str, lost_outcome: str = RunOutcome.LOST, ctx: JobContext | None = None,
    error: str = "", error_class: str = "", dispatch: bool = True,
    then: Callable[[], None] | None = None,
) -> str | None:
    """The frame of every outcome; returns the prior status, or None when the run lost the job.

    Steps, in one transaction: (1) guarded ``running → to`` owned by this run, with the lease
    released and ``updates`` written, and its stamp; (2) the run's row closed as
    ``run_outcome`` (``lost_outcome`` when step 1 matched nothing); (3) if the job moved:
    ``then`` (in the same transaction) and a dispatch pass after commit.
    """
    with transaction.atomic():
        moved = job_transition_stamped(
            job_id=job.id, to=to, allowed_from=[JobStatus.RUNNING], event=event, actor=worker_actor(run.worker),
            details=details, updates={**_LEASE_RELEASED, **updates}, expect={"current_run_id": run.run_id},
            head=head_of(job),
        )
        prior = moved[0] if moved is not None else None
        if moved is not None:
            job.chain_seq, job.chain_hash = moved[1].seq, moved[1].hash
        JobRun.objects.filter(pk=run.pk).update(
            outcome=run_outcome if prior is not None else lost_outcome,
            finished_at=timezone.now(),
            error=error[:4000],
            error_class=error_class,
            tools_used=_tools_used(ctx),
        )
        if prior is not None:
            if then is not None:
                then()
            if dispatch:
                dispatch_soon()
    return prior


def scrub_secrets(job: Job, job_type: JobType | None, value: Any, *, drop_fields: bool = False) -> Any:
    """Mask the job's secret values in what will be stored (outputs, errors).

    Secrets are re-supplied from ``secret_inputs`` to every stage, so an intake output loses its
    secret fields entirely rather than storing them in ``normalized_inputs``.
    """
    if not job.secret_inputs:
        return value
    if drop_fields and isinstance(value, dict) and job_type is not None:
        value = {k: v for k, v in value.items() if k not in job_type.secret_fields}
    # A secret the submitter also gave in a public input is no secret there: not masked.
    return secrets_scrub(value, secret_strings(decrypt_secrets(job.secret_inputs)), public=job.inputs)


def complete_stage(job: Job, run: JobRun, ctx: JobContext, *, job_type: JobType, output: dict[str, Any],
                   worker: str, governance: dict[str, Any] | None = None) -> StageOutcome:
    """Success: the next stage (``queued``, or ``pending_approval`` with its request opened when
    a checkpoint stands before it), or ``succeeded`` after the last stage."""
    nxt = job_type.next_stage(run.stage)
    output = scrub_secrets(job, job_type, output, drop_fields=run.stage == Stage.INTAKE)
    # The worker's own policy decision (rule, version, path) goes into the outcome stamp.
    details = {**_run_details(job, run, ctx, worker), **(governance or {})}
    updates: dict[str, Any] = {
        "attempts": 0,
        "claims": 0,
        "dispatched_at": None,
        "error": "",
        "error_class": "",
        "progress_pct": 100.0,
    }
    if run.stage == Stage.INTAKE:
        updates["normalized_inputs"] = output
    elif run.stage == Stage.EXECUTE:
        updates["proposal" if nxt else "result"] = output
    else:
        updates["result"] = output
    if nxt is None:
        prior = _settle(job, run, to=JobStatus.SUCCEEDED, event=Event.SUCCEEDED, details=details,
                        updates=updates, run_outcome=RunOutcome.SUCCEEDED, ctx=ctx)
        outcome = "succeeded"
    else:
        to, extra = next_stage_status(job=job, next_stage=nxt)
        checkpoint = extra["approval_checkpoint"]
        prior = _settle(
            job, run, to=to, event=Event.STAGE_COMPLETED, details={**details, "next_stage": nxt},
            updates={**updates, **extra, "stage": nxt}, run_outcome=RunOutcome.SUCCEEDED, ctx=ctx,
            then=(lambda: _open_request(job, checkpoint, job.policy_decision or {})) if checkpoint else None,
        )
        outcome = "advanced"
    if prior is None:
        return StageOutcome(job.id, "lost", "job changed while running")
    return StageOutcome(job.id, outcome, nxt or "")


def fail_stage(job: Job, run: JobRun, ctx: JobContext | None, *, error_class: str, error: str,
               job_type: JobType | None, extra: dict[str, Any] | None = None) -> StageOutcome:
    """Failure: ``retry_scheduled`` with backoff while the class is retryable and attempts are
    left, else ``dead_lettered`` with its final error class."""
    worker = run.worker
    error = scrub_secrets(job, job_type, error)
    details = {**_run_details(job, run, ctx, worker), "error_class": error_class, **(extra or {})}
    attempts = run.attempt
    retryable = error_class == ErrorClass.TRANSIENT or (
        error_class == ErrorClass.TIMEOUT and (job_type is None or job_type.retry.retry_timeouts)
    )
    common = {"run_outcome": RunOutcome.FAILED, "ctx": ctx, "error": error, "error_class": error_class}
    if retryable and attempts < job.max_attempts and job_type is not None:
        delay = job_type.retry.backoff_s(attempts)
        prior = _settle(
            job, run, to=JobStatus.RETRY_SCHEDULED, event=Event.RETRY_SCHEDULED,
            details={**details, "retry_count": attempts, "backoff_s": round(delay, 3)},
            # A handled failure is a finished claim: ``claims`` counts only the claims that
            # never reached an outcome (worker lost), which is what poison detection needs.
            updates={"run_after": timezone.now() + timedelta(seconds=delay), "error": error[:4000],
                     "error_class": error_class, "dispatched_at": None, "claims": F("claims") - 1},
            **common,  # type: ignore[arg-type]
        )
        outcome = "retry"
    else:
        final_class = ErrorClass.RETRIES_EXHAUSTED if retryable and error_class == ErrorClass.TRANSIENT else error_class
        prior = _settle(
            job, run, to=JobStatus.DEAD_LETTERED, event=Event.DEAD_LETTERED,
            details={**details, "error_class": final_class, "retry_count": attempts},
            updates={"error": error[:4000], "error_class": final_class, "reason": final_class},
            **common,  # type: ignore[arg-type]
        )
        outcome = "dead_lettered"
    return StageOutcome(job.id, outcome if prior else "lost", error_class)


def cancel_running(job: Job, run: JobRun, ctx: JobContext, *, worker: str) -> StageOutcome:
    """The handler stopped at a cooperative cancel: ``cancelled``."""
    prior = _settle(
        job, run, to=JobStatus.CANCELLED, event=Event.CANCELLED,
        details={**_run_details(job, run, ctx, worker), "mode": "cooperative"},
        updates={"reason": "cancelled", "error_class": ErrorClass.CANCELLED},
        run_outcome=RunOutcome.CANCELLED, lost_outcome=RunOutcome.CANCELLED, ctx=ctx,
    )
    return StageOutcome(job.id, "cancelled" if prior else "lost")


def release_for_scope(job: Job, run: JobRun, *, worker: str, reason: str) -> StageOutcome:
    """A worker locked to other scopes refuses the job: back to queued for a worker that may."""
    _settle(
        job, run, to=JobStatus.QUEUED, event=Event.SCOPE_REFUSED,
        details={"reason": reason, "worker": worker, "run_id": run.run_id},
        # Not an attempt and not a claim; wait the redispatch window before the next try
        # so a mis-routed job does not bounce between refusing workers.
        updates={"dispatched_at": timezone.now(), "attempts": F("attempts") - 1, "claims": F("claims") - 1},
        run_outcome=RunOutcome.REFUSED, lost_outcome=RunOutcome.REFUSED, error=reason, error_class="scope_lock",
        dispatch=False,
    )
    return StageOutcome(job.id, "refused", "scope_lock")


def park_for_approval(job: Job, run: JobRun, *, worker: str, checkpoint: str,
                      decision: dict[str, Any]) -> StageOutcome:
    """running → pending_approval before the handler ran (the current policy now wants a
    human): not an attempt, not a claim; the request opens in the same transaction."""
    prior = _settle(
        job, run, to=JobStatus.PENDING_APPROVAL, event=Event.APPROVAL_REQUIRED,
        details={"run_id": run.run_id, "stage": run.stage, "checkpoint": checkpoint, "worker": worker,
                 "policy": decision},
        updates={"dispatched_at": None, "approval_checkpoint": checkpoint, "policy_decision": decision,
                 "attempts": F("attempts") - 1, "claims": F("claims") - 1},
        run_outcome=RunOutcome.REFUSED, lost_outcome=RunOutcome.REFUSED, error=f"approval required {checkpoint}",
        error_class="approval_required", dispatch=False,
        then=lambda: _open_request(job, checkpoint, decision),
    )
    return StageOutcome(job.id, "refused" if prior is None else "pending_approval", checkpoint)


def _open_request(job: Job, checkpoint: str, decision: dict[str, Any]) -> None:
    approval_open(job=job, checkpoint=checkpoint, approvers=int(decision.get("approvers") or 1))
