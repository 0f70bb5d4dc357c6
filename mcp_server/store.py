"""The job store is the task store: the SDK's ``TaskStore`` interface, backed by jobs.

A task id is a job id; a task's status, message and result are read from the job row through
:mod:`mcp_server.mapping`. There is no second task table and no second runtime: tasks are
created by ``tools/call`` through ``job_submit`` and finished by the platform's workers, so
``create_task`` and ``store_result`` are refused here, and the only update a client can make is
a cancel (``job_cancel``).

The SDK's default ``tasks/list`` and ``tasks/result`` handlers (mcp 1.26) call this store as it
is; every method acts for the principal of the request being handled
(:func:`mcp_server.auth.current_principal`), so a principal reaches only its own jobs.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from mcp.shared.exceptions import McpError
from mcp.shared.experimental.tasks.store import TaskStore
from mcp.types import INVALID_PARAMS, INVALID_REQUEST, ErrorData, Result, Task, TaskMetadata, TaskStatus

from common.errors import DomainError
from jobs.models import Job
from mcp_server.auth import current_principal
from mcp_server.db import in_db
from mcp_server.mapping import TASK_CANCELLED, call_result_for, snapshot, task_for
from mcp_server.selectors import BadCursor, task_job, task_jobs_page
from mcp_server.services import task_cancel
from mcp_server.waiting import job_changed, job_wait_terminal


def task_not_found(task_id: str) -> McpError:
    return McpError(ErrorData(code=INVALID_PARAMS, message=f"Task not found: {task_id}"))


def cancel_wait_s() -> float:
    """How long a cancel waits for a running job to stop: the cooperative grace, one pass of
    the enforcer that terminates it after the grace, and a margin."""
    return float(settings.JOBS_CANCEL_GRACE_S) + float(settings.JOBS_CANCEL_ENFORCE_TICK_S) + 5.0


async def own_job(principal: AbstractBaseUser, task_id: str) -> Job:
    job = await in_db(task_job, principal=principal, job_id=task_id)
    if job is None:
        raise task_not_found(task_id)
    return job


async def request_cancel(principal: AbstractBaseUser, job: Job, *, reason: str) -> None:
    """Ask the platform to cancel; a job that ended meanwhile is -32602, like a terminal task."""
    try:
        await in_db(task_cancel, principal=principal, job=job, reason=reason)
    except DomainError as exc:
        if exc.code == "not_cancellable":
            raise McpError(ErrorData(code=INVALID_PARAMS, message=f"Cannot cancel task in terminal state: {exc.detail}",
                                     data={"code": exc.code, "status": exc.extra.get("status")})) from None
        raise
    job_changed(job.pk)


class JobTaskStore(TaskStore):
    """``TaskStore`` over the jobs table (see the module docstring)."""

    async def create_task(self, metadata: TaskMetadata, task_id: str | None = None) -> Task:
        raise McpError(ErrorData(code=INVALID_REQUEST,
                                 message="tasks are created by tools/call: each one is a submitted job"))

    async def get_task(self, task_id: str) -> Task | None:
        job = await in_db(task_job, principal=current_principal(), job_id=task_id)
        return task_for(job) if job is not None else None

    async def update_task(
        self, task_id: str, status: TaskStatus | None = None, status_message: str | None = None
    ) -> Task:
        """Only a cancel: the job is cancelled through ``job_cancel`` and, when it was running,
        waited for until it stopped (cooperatively, or forced after the grace), because the
        2025-11-25 ``tasks/cancel`` answers with the task already cancelled."""
        if status != TASK_CANCELLED or status_message is not None:
            raise ValueError("a task's status is the job's; only a cancel can be asked for")
        principal = current_principal()
        job = await own_job(principal, task_id)
        await request_cancel(principal, job, reason="cancelled over MCP (tasks/cancel)")
        final = await job_wait_terminal(principal=principal, job_id=task_id, timeout=cancel_wait_s())
        if final is None:
            raise task_not_found(task_id)
        return task_for(final)

    async def store_result(self, task_id: str, result: Result) -> None:
        raise McpError(ErrorData(code=INVALID_REQUEST, message="a task's result is its job's, written by the workers"))

    async def get_result(self, task_id: str) -> Result | None:
        job = await in_db(task_job, principal=current_principal(), job_id=task_id)
        if job is None or not job.is_terminal:
            return None
        return call_result_for(job)

    async def list_tasks(self, cursor: str | None = None) -> tuple[list[Task], str | None]:
        try:
            jobs, next_cursor = await in_db(task_jobs_page, principal=current_principal(), cursor=cursor)
        except BadCursor:
            raise McpError(ErrorData(code=INVALID_PARAMS, message="Invalid cursor")) from None
        return [task_for(job) for job in jobs], next_cursor

    async def delete_task(self, task_id: str) -> bool:
        return False  # jobs leave only through retention (manage.py cleanup)

    async def wait_for_update(self, task_id: str) -> None:
        """Return once the task's status or message differs from now (or it is gone)."""
        principal = current_principal()
        first: tuple[str, str, float | None] | None = None

        async def changed(job: Job) -> bool:
            nonlocal first
            if first is None:
                first = snapshot(job)
                return False
            return snapshot(job)[:2] != first[:2]

        await job_wait_terminal(principal=principal, job_id=task_id, timeout=None, on_poll=changed)

    async def notify_update(self, task_id: str) -> None:
        job_changed(task_id)
