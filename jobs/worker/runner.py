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
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from audit.events import Event
from governance.cache import governance_snapshot_at, token_subquery
from governance.secrets import decrypt_secrets
from jobs.chain import head_of, job_stamp
from jobs.checkpoints import checkpoint_before
from jobs.errors import JobCancelled, PermanentError, UnknownJobType
from jobs.hooks import approval_gate
from jobs.logcontext import bind_run
from jobs.models import EffectRecord, ErrorClass, Job, JobRun, JobStatus, Stage, new_run_id
from jobs.registry import JobType, registry
from jobs.transitions import job_transition, job_transition_stamped
from jobs.worker.classify import classify_error
from jobs.worker.context import JobContext, RunMonitor
from jobs.worker.outcomes import (
    StageOutcome,
    cancel_running,
    complete_stage,
    fail_stage,
    park_for_approval,
    refuse,
    release_for_scope,
    worker_actor,
)
from jobs.worker.recheck import governance_recheck

logger = logging.getLogger(__name__)

STAGES = {Stage.INTAKE.value, Stage.EXECUTE.value, Stage.FINALIZE.value}


def job_claim(
    *, job_id: str, stage: str, token: str, worker: str, celery_task_id: str = ""
) -> tuple[Job, JobRun] | StageOutcome:
    """Claim the job for this message in one transaction: read it (with the governance version,
    so the re-check needs no read of its own), refuse what may not run, else the guarded
    queued → running with its stamp, and the run's row."""
    with transaction.atomic():
        return _claim(job_id=job_id, stage=stage, token=token, worker=worker, celery_task_id=celery_task_id)


def _claim(
    *, job_id: str, stage: str, token: str, worker: str, celery_task_id: str
) -> tuple[Job, JobRun] | StageOutcome:
    job = Job.objects.select_related("principal").annotate(governance_token=token_subquery()).filter(pk=job_id).first()
    if job is None:
        return refuse(job_id=job_id, reason="unknown_job", worker=worker, no_job=True)
    head = head_of(job)
    if job.status != JobStatus.QUEUED:
        return refuse(job_id=job_id, reason=f"not_claimable:{job.status}", worker=worker, head=head)
    if job.stage != stage:
        return refuse(job_id=job_id, reason="stage_mismatch", worker=worker, head=head,
                      details={"message_stage": stage, "job_stage": job.stage})
    if not token or token != job.dispatch_token:
        return refuse(job_id=job_id, reason="dispatch_token_mismatch", worker=worker, head=head)
    if job.claims >= settings.JOBS_MAX_CLAIMS_PER_STAGE:
        job_transition(
            job_id=job_id, to=JobStatus.DEAD_LETTERED, allowed_from=[JobStatus.QUEUED],
            event=Event.DEAD_LETTERED, actor=worker_actor(worker),
            details={"error_class": ErrorClass.POISON, "claims": job.claims, "stage": stage},
            updates={"error_class": ErrorClass.POISON, "reason": "poison",
                     "error": f"stage {stage} claimed {job.claims} times without finishing"},
            head=head,
        )
        return StageOutcome(job_id, "dead_lettered", "poison")
    now = timezone.now()
    # The first claim takes the run id answered at submit; every later one gets a fresh one.
    run_id = job.first_run_id if job.first_run_id and not job.current_run_id else new_run_id()
    with transaction.atomic(savepoint=False):
        moved = job_transition_stamped(
            job_id=job_id,
            to=JobStatus.RUNNING,
            allowed_from=[JobStatus.QUEUED],
            event=Event.CLAIMED,
            actor=worker_actor(worker),
            details={"run_id": run_id, "stage": stage, "attempt": job.attempts + 1, "worker": worker,
                     "trace_id": job.trace_id},
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
            head=head,
        )
        if moved is None:
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
    job.chain_seq, job.chain_hash = moved[1].seq, moved[1].hash
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
        stamp = job_stamp(job_id=job.id, event=Event.EFFECT_REPLAYED, actor=worker_actor(ctx.worker),
                          details={"effect_key": key, "run_id": ctx.run_id}, head=head_of(job))
        job.chain_seq, job.chain_hash = stamp.seq, stamp.hash
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
    verdict = governance_recheck(job=job, snapshot=governance_snapshot_at(getattr(job, "governance_token", None)))
    if not verdict.ok:
        if verdict.kind == "scope_lock":
            return release_for_scope(job, run, worker=worker, reason=verdict.reason)
        return fail_stage(job, run, ctx, error_class=ErrorClass.POLICY_VIOLATION, error=verdict.reason,
                          job_type=job_type, extra=verdict.details)
    assert job_type is not None  # the re-check refuses unregistered types
    # The worker re-evaluated policy: a rule that turned to require_approval after the job was
    # admitted parks it for a human before this stage, unless that checkpoint is approved.
    checkpoint = checkpoint_before(stage, decision=verdict.details.get("policy") or {})
    if checkpoint and not approval_gate().granted(job_id=job.id, checkpoint=checkpoint):
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
