"""Running one stage of one job inside a worker: claim, re-check, handle, classify.

This is what the Celery task base calls (``jobs.tasks``); it needs no broker, so it is tested
directly as well as through real workers.

Steps of :func:`stage_run`:
1. Validate the message's fields; refuse (and stamp) anything malformed.
2. Claim: guarded UPDATE queued → running for this stage and dispatch token, with a lease and a
   new ``JobRun``. An unknown id, wrong status, wrong stage, stale token or lost race is refused
   and stamped — the handler never runs.
3. Governance re-check (scope lock, grants, current policy). A scope mismatch releases the job
   for another worker; a violation dead-letters it (``policy_violation``).
4. Run the handler with a monitor thread (lease renewal + cancellation), under the soft time
   limit Celery set from ``max_runtime_s``.
5. Classify: success → next stage (queued) or ``succeeded``; cancel → ``cancelled``; transient
   → ``retry_scheduled`` with backoff until the attempt budget is spent; anything else →
   ``dead_lettered`` with its error class. Every outcome is one guarded transition with stamp.
"""

from __future__ import annotations

import logging
import socket
import urllib.error
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jsonschema
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from audit.services import stamp_append
from governance.secrets import decrypt_secrets, secret_strings, secrets_scrub
from governance.services import governance_recheck
from jobs.context import JobContext, RunMonitor
from jobs.dispatcher import dispatch_soon
from jobs.errors import JobCancelled, PermanentError, PolicyViolation, TransientError, UnknownJobType
from jobs.logcontext import bind_run
from jobs.metrics import message_refused
from jobs.models import EffectRecord, ErrorClass, Job, JobRun, JobStatus, RunOutcome, Stage, new_run_id
from jobs.registry import JobType, registry
from jobs.transitions import job_transition

logger = logging.getLogger(__name__)

STAGES = {Stage.INTAKE.value, Stage.EXECUTE.value, Stage.FINALIZE.value}


@dataclass
class StageOutcome:
    job_id: str
    outcome: str  # refused | succeeded | advanced | retry | dead_lettered | cancelled | lost
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"job_id": self.job_id, "outcome": self.outcome, "detail": self.detail}


def _worker_actor(worker: str) -> str:
    return f"worker:{worker}"


def refuse(*, job_id: str, reason: str, worker: str, details: dict[str, Any] | None = None) -> StageOutcome:
    """Stamp a refused message. The job (if any) is not changed."""
    stamp_append(
        job_id=job_id,
        event="claim_refused",
        actor=_worker_actor(worker),
        details={"reason": reason, "worker": worker, **(details or {})},
    )
    logger.warning("refused message for %s: %s", job_id, reason)
    message_refused(reason=reason)
    return StageOutcome(job_id, "refused", reason)


def job_claim(
    *, job_id: str, stage: str, token: str, worker: str, celery_task_id: str = ""
) -> tuple[Job, JobRun] | StageOutcome:
    job = Job.objects.select_related("principal").filter(pk=job_id).first()
    if job is None:
        return refuse(job_id=job_id, reason="unknown_job", worker=worker)
    if job.status != JobStatus.QUEUED:
        return refuse(job_id=job_id, reason=f"not_claimable:{job.status}", worker=worker)
    if job.stage != stage:
        return refuse(job_id=job_id, reason="stage_mismatch", worker=worker,
                      details={"message_stage": stage, "job_stage": job.stage})
    if not token or token != job.dispatch_token:
        return refuse(job_id=job_id, reason="dispatch_token_mismatch", worker=worker)
    if job.claims >= settings.JOBS_MAX_CLAIMS_PER_STAGE:
        job_transition(
            job_id=job_id, to=JobStatus.DEAD_LETTERED, allowed_from=[JobStatus.QUEUED],
            event="dead_lettered", actor=_worker_actor(worker),
            details={"error_class": ErrorClass.POISON, "claims": job.claims, "stage": stage},
            updates={"error_class": ErrorClass.POISON, "reason": "poison",
                     "error": f"stage {stage} claimed {job.claims} times without finishing"},
        )
        return StageOutcome(job_id, "dead_lettered", "poison")
    now = timezone.now()
    # The first claim takes the run id answered at submit; every later one gets a fresh one.
    run_id = job.first_run_id if job.first_run_id and not job.current_run_id else new_run_id()
    with transaction.atomic():
        prior = job_transition(
            job_id=job_id,
            to=JobStatus.RUNNING,
            allowed_from=[JobStatus.QUEUED],
            event="claimed",
            actor=_worker_actor(worker),
            details={"run_id": run_id, "stage": stage, "attempt": job.attempts + 1, "worker": worker},
            updates={
                "current_run_id": run_id,
                "lease_owner": worker,
                "lease_expires_at": now + timedelta(seconds=settings.JOBS_LEASE_S),
                "heartbeat_at": now,
                "started_at": job.started_at or now,
                "attempts": F("attempts") + 1,
                "claims": F("claims") + 1,
                "dispatch_token": "",
                "cancel_requested_at": None,
                "progress_pct": None,
                "progress_message": "",
            },
            expect={"stage": stage, "dispatch_token": token},
        )
        if prior is None:
            return refuse(job_id=job_id, reason="lost_race", worker=worker)
        run = JobRun.objects.create(
            run_id=run_id,
            job_id=job_id,
            stage=stage,
            attempt=job.attempts + 1,
            worker=worker,
            celery_task_id=celery_task_id,
            started_at=now,
            model_version=settings.JOBS_MODEL_VERSION,
        )
    # Mirror the UPDATE locally instead of re-reading the row (one query less per stage).
    job.status = JobStatus.RUNNING
    job.current_run_id = run_id
    job.lease_owner = worker
    job.lease_expires_at = now + timedelta(seconds=settings.JOBS_LEASE_S)
    job.heartbeat_at = now
    job.started_at = job.started_at or now
    job.attempts += 1
    job.claims += 1
    job.dispatch_token = ""
    job.cancel_requested_at = None
    job.progress_pct = None
    job.progress_message = ""
    return job, run


def classify_error(exc: BaseException, job_type: JobType | None) -> str:
    """Map an exception to an ErrorClass value (docs/reliability.md lists the defaults)."""
    if job_type is not None:
        own = job_type.classify_error(exc)
        if own:
            return own
        if job_type.dead_letter_on and isinstance(exc, job_type.dead_letter_on):
            return ErrorClass.PERMANENT
        if job_type.retry.permanent and isinstance(exc, job_type.retry.permanent):
            return ErrorClass.PERMANENT
        if job_type.retry.transient and isinstance(exc, job_type.retry.transient):
            return ErrorClass.TRANSIENT
    if isinstance(exc, SoftTimeLimitExceeded):
        return ErrorClass.TIMEOUT
    if isinstance(exc, PolicyViolation):
        return ErrorClass.POLICY_VIOLATION
    if isinstance(exc, PermanentError):
        return ErrorClass.PERMANENT
    if isinstance(exc, TransientError):
        return ErrorClass.TRANSIENT
    if isinstance(exc, urllib.error.HTTPError):
        return ErrorClass.TRANSIENT if exc.code == 429 or exc.code >= 500 else ErrorClass.PERMANENT
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        return ErrorClass.TRANSIENT if status == 429 or status >= 500 else ErrorClass.PERMANENT
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, urllib.error.URLError)):
        return ErrorClass.TRANSIENT
    if isinstance(exc, (jsonschema.ValidationError, ValueError, TypeError, KeyError, LookupError)):
        return ErrorClass.PERMANENT
    if job_type is not None and not job_type.retry.unknown_is_transient:
        return ErrorClass.PERMANENT
    return ErrorClass.TRANSIENT


def _close_run(run: JobRun, *, outcome: str, ctx: JobContext | None, error: str = "", error_class: str = "") -> None:
    JobRun.objects.filter(pk=run.pk).update(
        outcome=outcome,
        finished_at=timezone.now(),
        error=error[:4000],
        error_class=error_class,
        tools_used=[c["name"] for c in ctx.tool_calls] if ctx else [],
    )


def _run_details(job: Job, run: JobRun, ctx: JobContext | None, worker: str) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "stage": run.stage,
        "attempt": run.attempt,
        "worker": worker,
        "model_version": ctx.model_version if ctx else settings.JOBS_MODEL_VERSION,
        "tools_used": [c["name"] for c in ctx.tool_calls] if ctx else [],
        "trace_id": job.trace_id,
    }


def _handler_inputs(job: Job) -> dict[str, Any]:
    inputs = dict(job.normalized_inputs if job.normalized_inputs is not None else job.inputs)
    inputs.update(decrypt_secrets(job.secret_inputs))
    return inputs


def _call_stage(job_type: JobType, job: Job, ctx: JobContext) -> dict[str, Any]:
    if ctx.stage == Stage.INTAKE:
        out = job_type.intake(ctx, _handler_inputs(job))
    elif ctx.stage == Stage.EXECUTE:
        out = job_type.execute(ctx, _handler_inputs(job))
    else:
        out = _commit_through_ledger(job_type, job, ctx)
    if out is None:
        out = {}
    if not isinstance(out, dict):
        raise PermanentError(f"{ctx.stage} handler returned {type(out).__name__}, not a dict")
    return out


def _commit_through_ledger(job_type: JobType, job: Job, ctx: JobContext) -> dict[str, Any]:
    """Run ``commit`` at most once per effect key.

    The ledger row and the commit's own database writes share one transaction, so for effects
    in this database it is exactly-once; for external systems the key is passed on (see docs).
    """
    proposal = dict(job.proposal or {})
    if not job_type.idempotent_commit:
        return job_type.commit(ctx, proposal)
    key = job_type.effect_key(ctx, proposal)
    recorded = EffectRecord.objects.filter(job_type=job.job_type, effect_key=key).first()
    if recorded is not None:
        stamp_append(job_id=job.id, event="effect_replayed", actor=_worker_actor(ctx.worker),
                     details={"effect_key": key, "run_id": ctx.run_id})
        return dict(recorded.result)
    try:
        with transaction.atomic():
            result = job_type.commit(ctx, proposal) or {}
            EffectRecord.objects.create(job_type=job.job_type, effect_key=key, job_id=job.id, result=result)
    except IntegrityError:
        recorded = EffectRecord.objects.filter(job_type=job.job_type, effect_key=key).first()
        if recorded is None:
            raise
        return dict(recorded.result)
    return dict(result)


def stage_run(*, job_id: Any, stage: Any, token: Any, worker: str, celery_task_id: str = "",
              task_stage: str | None = None) -> StageOutcome:
    # 1. message validation
    if not isinstance(job_id, str) or not job_id or len(job_id) > 64:
        return refuse(job_id=str(job_id)[:64] or "(empty)", reason="malformed_job_id", worker=worker)
    if stage not in STAGES or (task_stage is not None and stage != task_stage):
        return refuse(job_id=job_id, reason="malformed_stage", worker=worker,
                      details={"message_stage": str(stage)[:32]})
    if not isinstance(token, str):
        return refuse(job_id=job_id, reason="malformed_token", worker=worker)

    # 2. claim
    claimed = job_claim(job_id=job_id, stage=stage, token=token, worker=worker, celery_task_id=celery_task_id)
    if isinstance(claimed, StageOutcome):
        return claimed
    job, run = claimed
    bind_run(job=job, run=run)
    try:
        job_type: JobType | None = registry.get(job.job_type)
    except UnknownJobType:
        job_type = None
    ctx = JobContext(
        job_id=job.id, run_id=run.run_id, stage=stage, attempt=run.attempt, session_id=job.session_id,
        trace_id=job.trace_id, correlation_id=job.correlation_id, conversation_id=job.conversation_id,
        principal=str(job.principal_id), worker=worker,
    )

    # 3. governance re-check
    verdict = governance_recheck(job=job)
    if not verdict.ok:
        if verdict.kind == "scope_lock":
            return release_for_scope(job, run, worker=worker, reason=verdict.reason)
        return fail_stage(job, run, ctx, error_class=ErrorClass.POLICY_VIOLATION, error=verdict.reason,
                          job_type=job_type, extra=verdict.details)
    assert job_type is not None  # the re-check refuses unregistered types
    checkpoint = approval_needed_now(job=job, stage=stage, decision=verdict.details.get("policy") or {})
    if checkpoint:
        return park_for_approval(job, run, worker=worker, checkpoint=checkpoint,
                                 decision=verdict.details.get("policy") or {})

    # 4. handler
    monitor = RunMonitor(ctx)
    monitor.start()
    try:
        output = _call_stage(job_type, job, ctx)
        if ctx.cancelled:
            raise JobCancelled(job.id)
    except JobCancelled:
        return cancel_running(job, run, ctx, worker=worker)
    except BaseException as exc:  # classified below; SystemExit/KeyboardInterrupt re-raised
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            raise
        error_class = classify_error(exc, job_type)
        logger.info("stage %s of %s failed (%s): %s", stage, job.id, error_class, type(exc).__name__,
                    extra=ctx.log_extra)
        return fail_stage(job, run, ctx, error_class=error_class, error=f"{type(exc).__name__}: {exc}",
                          job_type=job_type, extra=verdict.details)
    finally:
        monitor.stop()
        monitor.join(timeout=5)

    # 5. success
    return complete_stage(job, run, ctx, job_type=job_type, output=output, worker=worker,
                          governance=verdict.details)


def _scrub_secrets(job: Job, job_type: JobType | None, value: Any, *, drop_fields: bool = False) -> Any:
    """Mask the job's secret values in what will be stored (outputs, errors).

    Secrets are re-supplied from ``secret_inputs`` to every stage, so an intake output loses its
    secret fields entirely rather than storing them in ``normalized_inputs``.
    """
    if not job.secret_inputs:
        return value
    if drop_fields and isinstance(value, dict) and job_type is not None:
        value = {k: v for k, v in value.items() if k not in job_type.secret_fields}
    return secrets_scrub(value, secret_strings(decrypt_secrets(job.secret_inputs)))


def complete_stage(job: Job, run: JobRun, ctx: JobContext, *, job_type: JobType, output: dict[str, Any],
                   worker: str, governance: dict[str, Any] | None = None) -> StageOutcome:
    nxt = job_type.next_stage(run.stage)
    output = _scrub_secrets(job, job_type, output, drop_fields=run.stage == Stage.INTAKE)
    # The worker's own policy decision (rule, version, path) goes into the outcome stamp.
    details = {**_run_details(job, run, ctx, worker), **(governance or {})}
    updates: dict[str, Any] = {
        "lease_expires_at": None,
        "lease_owner": "",
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
    with transaction.atomic():
        if nxt is None:
            prior = job_transition(
                job_id=job.id, to=JobStatus.SUCCEEDED, allowed_from=[JobStatus.RUNNING],
                event="succeeded", actor=_worker_actor(worker), details=details, updates=updates,
                expect={"current_run_id": run.run_id},
            )
            outcome = "succeeded"
        else:
            from jobs.services import next_stage_status

            to, extra = next_stage_status(job=job, job_type=job_type, next_stage=nxt)
            updates.update(extra)
            updates["stage"] = nxt
            prior = job_transition(
                job_id=job.id, to=to, allowed_from=[JobStatus.RUNNING],
                event="stage_completed", actor=_worker_actor(worker),
                details={**details, "next_stage": nxt}, updates=updates,
                expect={"current_run_id": run.run_id},
            )
            outcome = "advanced"
        if prior is None:
            _close_run(run, outcome=RunOutcome.LOST, ctx=ctx, error="job changed while running")
            return StageOutcome(job.id, "lost", "job changed while running")
        _close_run(run, outcome=RunOutcome.SUCCEEDED, ctx=ctx)
        dispatch_soon()
    return StageOutcome(job.id, outcome, nxt or "")


def fail_stage(job: Job, run: JobRun, ctx: JobContext | None, *, error_class: str, error: str,
               job_type: JobType | None, extra: dict[str, Any] | None = None) -> StageOutcome:
    worker = run.worker
    error = _scrub_secrets(job, job_type, error)
    details = {**_run_details(job, run, ctx, worker), "error_class": error_class, **(extra or {})}
    attempts = run.attempt
    max_attempts = job.max_attempts
    retryable = error_class == ErrorClass.TRANSIENT or (
        error_class == ErrorClass.TIMEOUT and (job_type is None or job_type.retry.retry_timeouts)
    )
    with transaction.atomic():
        if retryable and attempts < max_attempts and job_type is not None:
            delay = job_type.retry.backoff_s(attempts)
            run_after = timezone.now() + timedelta(seconds=delay)
            prior = job_transition(
                job_id=job.id, to=JobStatus.RETRY_SCHEDULED, allowed_from=[JobStatus.RUNNING],
                event="retry_scheduled", actor=_worker_actor(worker),
                details={**details, "retry_count": attempts, "backoff_s": round(delay, 3)},
                # A handled failure is a finished claim: ``claims`` counts only the claims that
                # never reached an outcome (worker lost), which is what poison detection needs.
                updates={"run_after": run_after, "error": error[:4000], "error_class": error_class,
                         "lease_expires_at": None, "lease_owner": "", "dispatched_at": None,
                         "claims": F("claims") - 1},
                expect={"current_run_id": run.run_id},
            )
            outcome = "retry"
        else:
            final_class = (
                ErrorClass.RETRIES_EXHAUSTED
                if retryable and error_class == ErrorClass.TRANSIENT
                else error_class
            )
            prior = job_transition(
                job_id=job.id, to=JobStatus.DEAD_LETTERED, allowed_from=[JobStatus.RUNNING],
                event="dead_lettered", actor=_worker_actor(worker),
                details={**details, "error_class": final_class, "retry_count": attempts},
                updates={"error": error[:4000], "error_class": final_class, "reason": final_class},
                expect={"current_run_id": run.run_id},
            )
            outcome = "dead_lettered"
        _close_run(run, outcome=RunOutcome.FAILED if prior else RunOutcome.LOST, ctx=ctx, error=error,
                   error_class=error_class)
        if prior is not None:
            dispatch_soon()
    return StageOutcome(job.id, outcome if prior else "lost", error_class)


def cancel_running(job: Job, run: JobRun, ctx: JobContext, *, worker: str) -> StageOutcome:
    with transaction.atomic():
        prior = job_transition(
            job_id=job.id, to=JobStatus.CANCELLED, allowed_from=[JobStatus.RUNNING],
            event="cancelled", actor=_worker_actor(worker),
            details={**_run_details(job, run, ctx, worker), "mode": "cooperative"},
            updates={"reason": "cancelled", "error_class": ErrorClass.CANCELLED},
            expect={"current_run_id": run.run_id},
        )
        _close_run(run, outcome=RunOutcome.CANCELLED, ctx=ctx)
        if prior is not None:
            dispatch_soon()
    return StageOutcome(job.id, "cancelled" if prior else "lost")


def release_for_scope(job: Job, run: JobRun, *, worker: str, reason: str) -> StageOutcome:
    """A worker locked to other scopes refuses the job: back to queued for a worker that may."""
    with transaction.atomic():
        job_transition(
            job_id=job.id, to=JobStatus.QUEUED, allowed_from=[JobStatus.RUNNING],
            event="scope_refused", actor=_worker_actor(worker),
            details={"reason": reason, "worker": worker, "run_id": run.run_id},
            # Not an attempt and not a claim; wait the redispatch window before the next try
            # so a mis-routed job does not bounce between refusing workers.
            updates={"lease_expires_at": None, "lease_owner": "", "dispatched_at": timezone.now(),
                     "attempts": F("attempts") - 1, "claims": F("claims") - 1},
            expect={"current_run_id": run.run_id},
        )
        _close_run(run, outcome=RunOutcome.REFUSED, ctx=None, error=reason, error_class="scope_lock")
    return StageOutcome(job.id, "refused", "scope_lock")


def approval_needed_now(*, job: Job, stage: str, decision: dict[str, Any]) -> str:
    """The checkpoint the *current* policy puts before this stage, if it is not approved yet.

    The worker re-evaluates policy before every stage; a rule that turned to
    ``require_approval`` after the job was admitted parks it for a human instead of letting it
    run unreviewed. ``before_execute`` guards the execute stage, ``before_commit`` the finalize
    stage; a checkpoint already approved for this job (at submit or earlier) passes.
    """
    from approvals.selectors import approval_granted

    if decision.get("action") != "require_approval":
        return ""
    wanted = decision.get("checkpoint") or ""
    if stage == Stage.EXECUTE and wanted in ("before_execute", "both"):
        checkpoint = "before_execute"
    elif stage == Stage.FINALIZE and wanted in ("before_commit", "both"):
        checkpoint = "before_commit"
    else:
        return ""
    return "" if approval_granted(job_id=job.id, checkpoint=checkpoint) else checkpoint


def park_for_approval(job: Job, run: JobRun, *, worker: str, checkpoint: str,
                      decision: dict[str, Any]) -> StageOutcome:
    """running → pending_approval before the handler ran: not an attempt, not a claim."""
    from jobs.services import open_approval_by_id

    with transaction.atomic():
        prior = job_transition(
            job_id=job.id, to=JobStatus.PENDING_APPROVAL, allowed_from=[JobStatus.RUNNING],
            event="approval_required", actor=_worker_actor(worker),
            details={"run_id": run.run_id, "stage": run.stage, "checkpoint": checkpoint, "worker": worker,
                     "policy": decision},
            updates={"lease_expires_at": None, "lease_owner": "", "dispatched_at": None,
                     "approval_checkpoint": checkpoint, "policy_decision": decision,
                     "attempts": F("attempts") - 1, "claims": F("claims") - 1},
            expect={"current_run_id": run.run_id},
        )
        _close_run(run, outcome=RunOutcome.REFUSED, ctx=None, error=f"approval required {checkpoint}",
                   error_class="approval_required")
        if prior is not None:
            transaction.on_commit(lambda: open_approval_by_id(job.id))
    return StageOutcome(job.id, "refused" if prior is None else "pending_approval", checkpoint)
