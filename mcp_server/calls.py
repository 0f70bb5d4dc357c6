"""``tools/call``: every call submits a job, and answers in one of three ways.

1. ``params.task`` present (2025-11-25 tasks): a ``CreateTaskResult`` with the job as task,
   as soon as the job is stored.
2. The Tasks extension declared in ``params._meta`` (SEP-2663): the task, flattened, with
   ``resultType: "task"``.
3. Neither (a client without tasks): the call still goes through the queue and answers when
   the job is terminal — the job's result, or an error result for a failed or cancelled job
   (a cancel from the console or REST included) — at most the job's max runtime per stage
   plus ``MCP_SYNC_WAIT_GRACE_S``; progress notifications when the request has a
   ``progressToken``; the client's ``notifications/cancelled`` cancels the job.

The idempotency key is the MCP session id + the request id, so a retried request finds the job
of the first try instead of submitting a second one.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from mcp import types
from mcp.server.lowlevel.server import request_ctx
from mcp.shared.exceptions import McpError

from common.errors import DomainError
from jobs.models import Job
from jobs.registry import registry
from mcp_server.auth import current_principal, current_session_id
from mcp_server.db import in_db
from mcp_server.extension import ext_result, opted_in
from mcp_server.mapping import (
    call_result_for,
    ext_task,
    status_message,
    task_for,
    unfinished_result_for,
)
from mcp_server.notify import TaskStatusWatcher
from mcp_server.rawrpc import ClientCancels, client_cancels
from mcp_server.selectors import task_job
from mcp_server.services import task_cancel, tool_call_submit
from mcp_server.waiting import job_changed, job_wait_terminal

logger = logging.getLogger(__name__)

MODEL_IMMEDIATE_RESPONSE_KEY = "io.modelcontextprotocol/model-immediate-response"


def _stages(job_type: str) -> list[str]:
    types_by_name = registry.all()
    return types_by_name[job_type].stages() if job_type in types_by_name else ["execute"]


class ProgressReporter:
    """``notifications/progress`` for a call without tasks, from the job as it is polled.

    ``progress`` counts 100 per stage (a two-stage job goes 0→200 of ``total`` 200), with the
    task's status message as ``message`` ("step 3/100", "waiting for approval before commit").
    A change of message alone still advances the value by a hundredth: MCP requires every
    notification's progress to be larger than the last.
    """

    def __init__(self, *, session: Any, token: str | int, request_id: Any, stages: list[str]) -> None:
        self.session = session
        self.token = token
        self.request_id = request_id
        self.stages = stages
        self.total = 100.0 * len(stages)
        self.sent = -1.0
        self.last: tuple[float, str] | None = None

    def value(self, job: Job) -> float:
        index = self.stages.index(job.stage) if job.stage in self.stages else 0
        if job.status == "succeeded":
            return self.total
        return 100.0 * index + float(job.progress_pct or 0.0)

    async def __call__(self, job: Job) -> bool:
        value, message = self.value(job), status_message(job)
        if (value, message) == self.last:
            return False
        self.last = (value, message)
        value = max(value, self.sent + 0.01)
        try:
            await self.session.send_progress_notification(
                self.token, value, self.total, message, related_request_id=str(self.request_id)
            )
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False  # the client went away; the call ends with its job or its budget
        self.sent = value
        return False


class ToolCalls:
    """The ``tools/call`` handler (registered as the SDK's ``CallToolRequest`` handler)."""

    def __init__(self, watcher: TaskStatusWatcher, cancels: ClientCancels | None = None) -> None:
        self.watcher = watcher
        self.cancels = cancels or client_cancels

    async def __call__(self, req: types.CallToolRequest) -> types.ServerResult:
        ctx = request_ctx.get()
        principal = current_principal()
        params = req.params
        as_task, ext = params.task is not None, opted_in(params.meta)
        session_id = current_session_id()
        try:
            submitted = await in_db(
                tool_call_submit, principal=principal, tool=params.name, arguments=params.arguments or {},
                session_id=session_id, request_id=ctx.request_id,
            )
        except DomainError as exc:
            return self.refused(exc, tool=params.name, as_task=as_task, ext=ext)
        job = submitted.job
        if as_task:
            self.watcher.watch(session=ctx.session, job=job)
            return types.ServerResult(types.CreateTaskResult(
                task=task_for(job),
                _meta={MODEL_IMMEDIATE_RESPONSE_KEY: f"Submitted as job {job.pk}: {status_message(job)}."},
            ))
        if ext:
            return ext_result(ext_task(job), result_type="task")
        result = await self.wait(principal=principal, job=job, session_id=session_id)
        return types.ServerResult(result)

    @staticmethod
    def refused(exc: DomainError, *, tool: str, as_task: bool, ext: bool) -> types.ServerResult:
        """A refusal before any job exists. An unknown tool is a protocol error; anything else
        (invalid arguments, a reused idempotency key) is a tool error the model can correct —
        except for a task request, whose answer must be a task or a protocol error."""
        if exc.code == "unknown_job_type":
            raise McpError(types.ErrorData(code=types.INVALID_PARAMS, message=f"Unknown tool: {tool}"))
        if as_task:
            raise McpError(types.ErrorData(code=types.INVALID_PARAMS, message=exc.detail, data=exc.as_dict()))
        result = types.CallToolResult(
            content=[types.TextContent(type="text", text=f"{exc.detail} ({exc.code})")],
            structuredContent=exc.as_dict(),
            isError=True,
        )
        if ext:
            return types.ServerResult(types.CallToolResult.model_validate(
                {**result.model_dump(by_alias=True, exclude_none=True), "resultType": "complete"}))
        return types.ServerResult(result)

    async def wait(self, *, principal: AbstractBaseUser, job: Job, session_id: str) -> types.CallToolResult:
        """Wait for the job of a call without tasks (see the module docstring, case 3)."""
        if job.is_terminal:
            return call_result_for(job)
        ctx = request_ctx.get()
        stages = await in_db(_stages, job.job_type)
        budget = job.max_runtime_s * len(stages) + float(settings.MCP_SYNC_WAIT_GRACE_S)
        token = ctx.meta.progressToken if ctx.meta is not None else None
        reporter = None
        if token is not None:
            reporter = ProgressReporter(session=ctx.session, token=token, request_id=ctx.request_id, stages=stages)
        started = time.monotonic()
        try:
            final = await job_wait_terminal(principal=principal, job_id=job.pk, timeout=budget, on_poll=reporter)
        except anyio.get_cancelled_exc_class():
            # A client's notifications/cancelled cancels the job; a server shutdown does not.
            if self.cancels.pop(session_id, ctx.request_id):
                with anyio.CancelScope(shield=True):
                    await cancel_for_client(principal, job.pk)
            raise
        if final is None:
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=f"Job {job.pk} is no longer available.")],
                isError=True,
            )
        if not final.is_terminal:
            return unfinished_result_for(final, time.monotonic() - started)
        return call_result_for(final)


async def cancel_for_client(principal: AbstractBaseUser, job_id: str) -> None:
    """Cancel the job of a request the client cancelled; a job that already ended stays as it is."""
    try:
        job = await in_db(task_job, principal=principal, job_id=job_id)
        if job is not None and not job.is_terminal:
            await in_db(task_cancel, principal=principal, job=job,
                        reason="cancelled by the MCP client (notifications/cancelled)")
            job_changed(job_id)
    except DomainError as exc:
        logger.info("client cancel of %s not applied: %s", job_id, exc.detail)
    except Exception:  # the request is cancelled either way; say why the job was not
        logger.exception("client cancel of %s failed", job_id)
