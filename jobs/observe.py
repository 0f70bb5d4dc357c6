"""What a job's status change leaves for operators besides its audit stamp: one JSON log line
(logger ``jobs.transitions``) and its metrics (``jobs.metrics``).

``jobs.transitions`` calls :func:`transition_observed` (and :func:`creation_observed`,
:func:`bulk_observed`) inside the transition's transaction; the line is written and the metrics
counted only after that transaction commits, so a transition that was rolled back leaves neither.

Every transition line carries: ``event``, ``job_id``, ``run_id``, ``trace_id``, ``from_status``,
``to_status``, ``job_type``, ``stage``, ``attempt`` (the retry count: attempts of the current
stage), ``model_version``, ``tools_used``, ``decision`` (the policy decision path: action, rule,
policy version, path) and ``actor``. Values come, cheapest first, from the transition's details
(the runner puts run id, attempt, model version, tools and the worker's policy decision there),
from the job bound to the current worker task (``jobs.logcontext``), and only when the trace id or,
for a finish, the job type is still unknown, from one read of the job row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import transaction

from jobs import metrics
from jobs.logcontext import bound_job
from jobs.models import TERMINAL_STATUSES, Job

logger = logging.getLogger("jobs.transitions")

DECISION_KEYS = ("action", "rule_id", "rule_name", "policy_version", "path", "reason")


def _decision(details: dict[str, Any]) -> dict[str, Any] | None:
    policy = details.get("policy")
    if not isinstance(policy, dict):
        return None
    return {k: policy[k] for k in DECISION_KEYS if k in policy}


def _attempt(details: dict[str, Any], fallback: int | None) -> int | None:
    for key in ("attempt", "retry_count"):
        value = details.get(key)
        if isinstance(value, int):
            return value
    return fallback


def _emit(record: dict[str, Any], *, stage_started: Any = None) -> None:
    metrics.job_transitioned(job_type=record["job_type"], from_status=record["from_status"],
                             to_status=record["to_status"], stage=record["stage"], run_started_at=stage_started)
    logger.info("job %s %s: %s -> %s", record["job_id"], record["event"], record["from_status"] or "(new)",
                record["to_status"], extra=record)


def transition_observed(*, job_id: str, event: str, actor: str, from_status: str, to_status: str,
                        details: dict[str, Any] | None) -> None:
    """Log and count one guarded transition after commit (called inside its transaction)."""
    details = details or {}
    bound = bound_job(job_id)
    trace_id = details.get("trace_id") or (bound.trace_id if bound else "")
    job_type = bound.job_type if bound else ""
    run_id = details.get("run_id") or (bound.run_id if bound else "")
    stage = details.get("stage") or (bound.stage if bound else "")
    attempt = _attempt(details, bound.attempt if bound else None)
    if not trace_id or (not job_type and to_status in TERMINAL_STATUSES):
        # Outside a worker's own job (web, beat, the reaper): one read, in the same transaction.
        found = Job.objects.filter(pk=job_id).values(
            "trace_id", "job_type", "current_run_id", "stage", "attempts").first()
        row: dict[str, Any] = dict(found) if found else {}
        trace_id = trace_id or row.get("trace_id", "")
        job_type = job_type or row.get("job_type", "")
        run_id = run_id or row.get("current_run_id", "")
        stage = stage or row.get("stage", "")
        attempt = attempt if attempt is not None else row.get("attempts")
    record = {
        "event": event, "job_id": job_id, "run_id": run_id, "trace_id": trace_id,
        "from_status": from_status, "to_status": to_status, "job_type": job_type, "stage": stage,
        "attempt": attempt, "model_version": details.get("model_version") or settings.JOBS_MODEL_VERSION,
        "tools_used": list(details.get("tools_used") or []), "decision": _decision(details), "actor": actor,
    }
    if details.get("error_class"):
        record["error_class"] = details["error_class"]
    # The stage duration is only known where the run was claimed: the worker that ran it.
    started = bound.run_started_at if bound and from_status and run_id == bound.run_id else None
    transaction.on_commit(lambda: _emit(record, stage_started=started))


def creation_observed(*, job: Job, event: str, actor: str, details: dict[str, Any] | None) -> None:
    """Log and count a new job (its first status: queued, pending_approval or blocked)."""
    details = details or {}
    record = {
        "event": event, "job_id": job.id, "run_id": job.first_run_id, "trace_id": job.trace_id,
        "from_status": "", "to_status": job.status, "job_type": job.job_type, "stage": job.stage,
        "attempt": 0, "model_version": settings.JOBS_MODEL_VERSION, "tools_used": [],
        "decision": _decision(details), "actor": actor,
    }

    def emit() -> None:
        metrics.job_submitted(job_type=job.job_type, status=job.status)
        logger.info("job %s %s: (new) -> %s", job.id, event, job.status, extra=record)

    transaction.on_commit(emit)


def bulk_observed(*, moved: dict[str, list[str]], jobs: dict[str, tuple[str, str]], to_status: str, event: str,
                  actor: str, details: dict[str, Any] | None) -> None:
    """Log and count a bulk move (``jobs`` maps id → (job type, trace id)); one line per job."""
    details = details or {}
    decision = _decision(details)

    def emit() -> None:
        counts: dict[tuple[str, str], int] = {}
        for prior, ids in moved.items():
            for job_id in ids:
                job_type, trace_id = jobs.get(job_id, ("", ""))
                counts[(prior, job_type)] = counts.get((prior, job_type), 0) + 1
                logger.info("job %s %s: %s -> %s", job_id, event, prior, to_status, extra={
                    "event": event, "job_id": job_id, "run_id": "", "trace_id": trace_id, "from_status": prior,
                    "to_status": to_status, "job_type": job_type, "stage": "", "attempt": None,
                    "model_version": settings.JOBS_MODEL_VERSION, "tools_used": [], "decision": decision,
                    "actor": actor,
                })
        for (prior, job_type), n in counts.items():
            metrics.job_transitioned(job_type=job_type, from_status=prior, to_status=to_status, count=n)

    transaction.on_commit(emit)


def ids_of(rows: Iterable[tuple[str, str, str]]) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """Split (id, job type, trace id) rows into the ids and a map for :func:`bulk_observed`."""
    ids: list[str] = []
    info: dict[str, tuple[str, str]] = {}
    for job_id, job_type, trace_id in rows:
        ids.append(job_id)
        info[job_id] = (job_type, trace_id)
    return ids, info
