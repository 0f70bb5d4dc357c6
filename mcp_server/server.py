"""The MCP server and the ASGI app that serves it at ``/mcp`` (Streamable HTTP).

Layers of the ASGI app, outside in::

    Starlette (lifespan: the SDK's session manager + the status notifier; one route, /mcp)
      └ TokenAuthMiddleware   401 without a valid token; the principal into the scope
          └ RawJsonRpc        413 for an oversized body; tasks/update; notes client cancels
              └ StreamableHTTPSessionManager (mcp 1.26) → the low-level Server's handlers

Handlers:

| request          | handled by                                                            |
|------------------|-----------------------------------------------------------------------|
| tools/list       | :func:`list_tools` — the job types the principal's grants cover       |
| tools/call       | :class:`mcp_server.calls.ToolCalls` — ``job_submit``; task, or wait     |
| tasks/get        | :func:`get_task` — 2025-11-25 ``Task``, or SEP-2663 ``DetailedTask``   |
| tasks/cancel     | :func:`cancel_task` — ``job_cancel``; 2025-11-25 waits, SEP-2663 acks  |
| tasks/list       | the SDK's default handler over :class:`mcp_server.store.JobTaskStore`   |
| tasks/result     | the SDK's default handler (``TaskResultHandler``) over the same store   |
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
from mcp import types
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import McpError
from mcp.shared.experimental.tasks.helpers import cancel_task as sdk_cancel_task
from mcp.shared.experimental.tasks.helpers import is_terminal
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from mcp_server.auth import SessionOwners, TokenAuthMiddleware, current_principal
from mcp_server.calls import ToolCalls
from mcp_server.db import in_db
from mcp_server.extension import ext_result, opted_in
from mcp_server.mapping import ext_detailed_task, task_for, tool_for
from mcp_server.notify import TaskStatusWatcher
from mcp_server.rawrpc import RawJsonRpc
from mcp_server.selectors import submittable_job_types
from mcp_server.store import JobTaskStore, own_job, request_cancel

SERVER_NAME = "jobplatform"
INSTRUCTIONS = (
    "Every tool is a governed job type of this platform. A call is validated, checked against your "
    "grants and the policy rules, audited, queued and run by a worker; some wait for a human reviewer. "
    "Prefer calling tools as tasks and poll them; a plain call waits until the job has finished."
)


class JobPlatformServer(Server[Any, Any]):
    def get_capabilities(
        self, notification_options: NotificationOptions, experimental_capabilities: dict[str, dict[str, Any]]
    ) -> types.ServerCapabilities:
        capabilities = super().get_capabilities(notification_options, experimental_capabilities)
        # mcp 1.26 advertises tasks.requests.tools without ``call``; a client reading the
        # capability (2025-11-25: tasks.requests.tools.call) would not call tools as tasks.
        if capabilities.tasks is not None and capabilities.tasks.requests is not None:
            capabilities.tasks.requests.tools = types.TasksToolsCapability(call=types.TasksCallCapability())
        return capabilities


async def list_tools(req: types.ListToolsRequest) -> types.ServerResult:
    job_types = await in_db(submittable_job_types, principal=current_principal())
    return types.ServerResult(types.ListToolsResult(tools=[tool_for(job_type) for job_type in job_types]))


async def get_task(req: types.GetTaskRequest) -> types.ServerResult:
    job = await own_job(current_principal(), req.params.taskId)
    if opted_in(req.params.meta):
        return ext_result(ext_detailed_task(job))
    task = task_for(job)
    return types.ServerResult(types.GetTaskResult(**task.model_dump()))


def cancel_handler(store: JobTaskStore) -> Any:
    async def cancel_task(req: types.CancelTaskRequest) -> types.ServerResult:
        """2025-11-25: -32602 on a terminal task, else cancel and answer the task once it
        stopped (the SDK's helper, over the store). SEP-2663: acknowledge at once — the cancel is
        eventually consistent — and -32602 on a terminal task as well (one rule for both)."""
        task_id = req.params.taskId
        if not opted_in(req.params.meta):
            return types.ServerResult(await sdk_cancel_task(store, task_id))
        principal = current_principal()
        job = await own_job(principal, task_id)
        if is_terminal(task_for(job).status):
            raise terminal_task_error(task_for(job).status)
        await request_cancel(principal, job, reason="cancelled over MCP (tasks/cancel)")
        return ext_result({})

    return cancel_task


def terminal_task_error(status: str) -> McpError:
    return McpError(types.ErrorData(code=types.INVALID_PARAMS,
                                    message=f"Cannot cancel task in terminal state '{status}'"))


def build_server(watcher: TaskStatusWatcher) -> JobPlatformServer:
    server = JobPlatformServer(SERVER_NAME, instructions=INSTRUCTIONS)
    store = JobTaskStore()
    server.request_handlers[types.ListToolsRequest] = list_tools
    server.request_handlers[types.CallToolRequest] = ToolCalls(watcher)
    server.request_handlers[types.GetTaskRequest] = get_task
    server.request_handlers[types.CancelTaskRequest] = cancel_handler(store)
    # Registers the SDK's defaults for what is left (tasks/list, tasks/result) over our store.
    server.experimental.enable_tasks(store=store)
    return server


class _Transport:
    """The session manager's request entry as an ASGI app (Starlette routes a bound method
    as a request/response endpoint, an object with ``__call__`` as ASGI)."""

    def __init__(self, manager: StreamableHTTPSessionManager) -> None:
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.manager.handle_request(scope, receive, send)


def mcp_asgi_app() -> Starlette:
    """The ``/mcp`` app. Its lifespan must run (uvicorn runs it; ``config.asgi`` forwards the
    lifespan to it): the SDK's session manager keeps every session's task group in it."""
    watcher = TaskStatusWatcher()
    manager = StreamableHTTPSessionManager(app=build_server(watcher), stateless=False, json_response=False)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run(), anyio.create_task_group() as tg:
            tg.start_soon(watcher.run)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    endpoint = TokenAuthMiddleware(RawJsonRpc(_Transport(manager)), SessionOwners())
    return Starlette(routes=[Route("/mcp", endpoint=endpoint)], lifespan=lifespan)
