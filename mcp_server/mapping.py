"""One mapping from a job to what MCP shows of it: task status, status message, results.

Both protocols read it: the 2025-11-25 tasks (``Task``, ``CallToolResult`` from
``tasks/result``) and the Tasks extension SEP-2663 (``DetailedTask`` with the result or error
inline), so a job means the same thing whichever way it is asked about.

| job status                                   | task status  |
|----------------------------------------------|--------------|
| queued, running, retry_scheduled, pending_approval | working |
| succeeded                                    | completed    |
| dead_lettered, blocked                       | failed       |
| cancelled                                    | cancelled    |
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from mcp import types

from jobs.models import Job, JobStatus
from jobs.registry import JobType

TASK_WORKING = "working"
TASK_COMPLETED = "completed"
TASK_FAILED = "failed"
TASK_CANCELLED = "cancelled"
TERMINAL_TASK_STATUSES = (TASK_COMPLETED, TASK_FAILED, TASK_CANCELLED)

TASK_STATUS_BY_JOB_STATUS: dict[str, str] = {
    JobStatus.QUEUED: TASK_WORKING,
    JobStatus.RUNNING: TASK_WORKING,
    JobStatus.RETRY_SCHEDULED: TASK_WORKING,
    JobStatus.PENDING_APPROVAL: TASK_WORKING,
    JobStatus.SUCCEEDED: TASK_COMPLETED,
    JobStatus.DEAD_LETTERED: TASK_FAILED,
    JobStatus.BLOCKED: TASK_FAILED,
    JobStatus.CANCELLED: TASK_CANCELLED,
}

# JSON-RPC error inlined in a failed task of the extension (the platform's detail is in data).
FAILED_TASK_ERROR_CODE = -32603
RELATED_TASK_KEY = "io.modelcontextprotocol/related-task"
MESSAGE_LIMIT = 300


def task_status(job: Job) -> str:
    return TASK_STATUS_BY_JOB_STATUS[job.status]


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def _progress(job: Job) -> str:
    if job.progress_message:
        return job.progress_message
    if job.progress_pct is not None:
        return f"{job.progress_pct:.0f}%"
    return ""


def status_message(job: Job) -> str:
    """A sentence a person (or a model) can act on: what the job is doing or why it ended."""
    status = job.status
    if status == JobStatus.PENDING_APPROVAL:
        step = "commit" if job.approval_checkpoint == "before_commit" else "execute"
        return f"waiting for approval before {step}"
    if status == JobStatus.RUNNING:
        if job.cancel_requested_at is not None:
            return "cancelling"
        return _clip(_progress(job) or f"running ({job.stage})")
    if status == JobStatus.QUEUED:
        return "queued for commit" if job.stage == "finalize" else "queued, waiting for a worker"
    if status == JobStatus.RETRY_SCHEDULED:
        return _clip(f"retrying after a transient error (attempt {job.attempts} of {job.max_attempts})")
    if status == JobStatus.SUCCEEDED:
        return "succeeded"
    if status == JobStatus.BLOCKED:
        return _clip(f"blocked: {job.reason}")
    if status == JobStatus.DEAD_LETTERED:
        detail = job.error or job.reason
        return _clip(f"dead-lettered ({job.error_class or 'error'})" + (f": {detail}" if detail else ""))
    if status == JobStatus.CANCELLED:
        reason = job.reason if job.reason and job.reason != "cancelled" else ""
        return _clip("cancelled" + (f": {reason}" if reason else ""))
    return status


def poll_interval_ms(job: Job) -> int:
    if job.status == JobStatus.PENDING_APPROVAL:
        return int(settings.MCP_APPROVAL_POLL_INTERVAL_MS)
    return int(settings.MCP_POLL_INTERVAL_MS)


def ttl_ms() -> int:
    return int(settings.MCP_TASK_TTL_S) * 1000


def snapshot(job: Job) -> tuple[str, str, float | None]:
    """What a watcher compares to decide whether a task changed."""
    return (task_status(job), status_message(job), job.progress_pct)


def task_for(job: Job) -> types.Task:
    """The 2025-11-25 ``Task`` of a job (task id = job id)."""
    return types.Task(
        taskId=job.pk,
        status=task_status(job),  # type: ignore[arg-type]
        statusMessage=status_message(job),
        createdAt=job.created_at,
        lastUpdatedAt=max(job.updated_at, job.created_at),
        ttl=ttl_ms(),
        pollInterval=poll_interval_ms(job),
    )


def _failure(job: Job) -> dict[str, Any]:
    body: dict[str, Any] = {"job_id": job.pk, "status": job.status}
    if job.error_class:
        body["error_class"] = job.error_class
    if job.reason:
        body["reason"] = job.reason
    if job.error:
        body["error"] = job.error[:2000]
    if job.status == JobStatus.BLOCKED:
        body["code"] = "permission_denied" if job.reason.startswith("missing permissions") else "policy_blocked"
    return body


def call_result_for(job: Job) -> types.CallToolResult:
    """The tool result of a finished job: the job's result as structured content plus the same
    as text; an error result (``isError``) for a job that failed or was cancelled."""
    if job.status == JobStatus.SUCCEEDED:
        result = job.result if isinstance(job.result, dict) else {"result": job.result}
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(result, default=str))],
            structuredContent=result,
            isError=False,
        )
    body = _failure(job)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"Job {job.pk} {status_message(job)}.")],
        structuredContent=body,
        isError=True,
    )


def unfinished_result_for(job: Job, waited_s: float) -> types.CallToolResult:
    """A call without tasks that ran out of time: the job goes on; say so, and how to follow it."""
    body = {"job_id": job.pk, "status": job.status, "task_status": task_status(job),
            "status_message": status_message(job), "waited_s": round(waited_s, 1)}
    text = (f"Job {job.pk} is still {status_message(job)} after {waited_s:.0f} s. It keeps going: do not call "
            f"the tool again; follow it with tasks/get {job.pk} or GET /api/v1/jobs/{job.pk}.")
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                structuredContent=body, isError=True)


# --- the Tasks extension (SEP-2663) ---------------------------------------------------------


def ext_task(job: Job) -> dict[str, Any]:
    """The extension's ``Task``: the same fields as :func:`task_for`, named ``ttlMs`` and
    ``pollIntervalMs``."""
    task = task_for(job)
    return {
        "taskId": task.taskId,
        "status": task.status,
        "statusMessage": task.statusMessage,
        "createdAt": task.createdAt.isoformat(),
        "lastUpdatedAt": task.lastUpdatedAt.isoformat(),
        "ttlMs": task.ttl,
        "pollIntervalMs": task.pollInterval,
    }


def ext_detailed_task(job: Job) -> dict[str, Any]:
    """The extension's ``DetailedTask``: a completed task carries its ``CallToolResult`` inline,
    a failed one the JSON-RPC error (code -32603, the job's failure in ``data``)."""
    body = ext_task(job)
    status = body["status"]
    if status == TASK_COMPLETED:
        body["result"] = call_result_for(job).model_dump(by_alias=True, mode="json", exclude_none=True)
    elif status == TASK_FAILED:
        body["error"] = {"code": FAILED_TASK_ERROR_CODE, "message": status_message(job), "data": _failure(job)}
    return body


# --- tools ----------------------------------------------------------------------------------


def needs_task(job_type: type[JobType]) -> bool:
    """Whether a job type may wait for a human or run long: its tool requires task execution."""
    waits_for_human = str(job_type.risk) in ("high", "critical") or str(job_type.ack) != "none"
    return waits_for_human or job_type.max_runtime_s > int(settings.MCP_LONG_RUNTIME_S)


def tool_for(job_type: type[JobType]) -> types.Tool:
    mission = job_type.mission() or job_type.name
    return types.Tool(
        name=job_type.name,
        title=mission.splitlines()[0][:120],
        description=mission,
        inputSchema=dict(job_type.input_schema),
        execution=types.ToolExecution(taskSupport="required" if needs_task(job_type) else "optional"),
        _meta={"io.jobplatform/job-type": {
            "scope": job_type.scope,
            "risk": str(job_type.risk),
            "ack": str(job_type.ack),
            "max_runtime_s": job_type.max_runtime_s,
            "permissions": list(job_type.permissions),
            "stages": job_type.stages(),
        }},
    )
