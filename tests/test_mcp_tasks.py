"""MCP over Streamable HTTP with the official SDK's client (mcp 1.26), against a real uvicorn
server (``config.asgi``) and real Celery workers: tools from grants, tools called as tasks
(poll, result, cancel, list), calls without tasks, an approval over REST, isolation between
principals, and refused tokens."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from mcp import types
from mcp.shared.exceptions import McpError

from audit.models import AuditStamp
from examples.models import ExternalRecord
from jobs.models import Job, JobRun
from jobs.registry import registry
from tests.mcp_support import auth, sdk_session

pytestmark = pytest.mark.integration

TaskStatus = tuple[str, str | None]


async def wait_task(session: Any, task_id: str, predicate: Any, timeout: float = 30.0) -> types.GetTaskResult:
    with anyio.fail_after(timeout):
        while True:
            task = await session.experimental.get_task(task_id)
            if predicate(task):
                return task
            await anyio.sleep(0.1)


async def pending_approval_id(rest: httpx.AsyncClient, job_id: str | None, *, key: str | None = None,
                              timeout: float = 30.0) -> str:
    """The pending approval request of a job, found by job id or by the record key it writes."""
    with anyio.fail_after(timeout):
        while True:
            for approval in (await rest.get("/api/v1/approvals", params={"status": "pending"})).json()["results"]:
                if approval["job_id"] == job_id:
                    return str(approval["approval_id"])
                if key is not None:
                    detail = (await rest.get(f"/api/v1/approvals/{approval['approval_id']}")).json()
                    if detail["review"]["proposal"]["key"] == key:
                        return str(approval["approval_id"])
            await anyio.sleep(0.2)


def test_tools_are_the_job_types_the_grants_cover(live: Any, web_server: Any, make_principal: Any,
                                                  principal: Any) -> None:
    # given a principal allowed only demo:run and one with the default wider grants
    narrow = make_principal("narrow", ("demo:run",))

    async def scenario() -> tuple[dict[str, types.Tool], Any, dict[str, types.Tool]]:
        async with sdk_session(web_server.url, narrow.token) as session:
            tools = {t.name: t for t in (await session.list_tools()).tools}
            capabilities = session.get_server_capabilities()
        async with sdk_session(web_server.url, principal.token, scheme="Token") as session:
            wide = {t.name: t for t in (await session.list_tools()).tools}
        return tools, capabilities, wide

    # when each lists the tools (one with "Bearer", one with "Token")
    tools, capabilities, wide = anyio.run(scenario)

    # then each sees exactly the job types its grants cover
    assert set(tools) == {"demo.noop", "demo.long_running", "demo.flaky", "demo.stubborn"}
    assert {"demo.local_store_write", "demo.reviewed_store_write", "demo.http_call"} <= set(wide)
    # named after the job type, described by its mission, with its input schema
    long_running = registry.all()["demo.long_running"]
    tool = tools["demo.long_running"]
    assert tool.description == long_running.mission()
    assert tool.inputSchema == long_running.input_schema
    # tasks required where a human may be waited for or the run is long, optional otherwise
    assert tool.execution is not None and tool.execution.taskSupport == "required"  # 600 s
    assert wide["demo.reviewed_store_write"].execution.taskSupport == "required"  # type: ignore[union-attr]
    assert wide["demo.local_store_write"].execution.taskSupport == "optional"  # type: ignore[union-attr]
    assert tools["demo.noop"].execution.taskSupport == "optional"  # type: ignore[union-attr]
    # and the server says tools can be called as tasks, listed and cancelled
    assert capabilities.tasks is not None and capabilities.tasks.list is not None
    assert capabilities.tasks.cancel is not None
    assert capabilities.tasks.requests.tools.call is not None


def test_call_as_task_poll_and_result(live: Any, web_server: Any, principal: Any) -> None:
    notifications: list[types.TaskStatusNotificationParams] = []

    async def collect(message: Any) -> None:
        if isinstance(message, types.ServerNotification) and isinstance(message.root, types.TaskStatusNotification):
            notifications.append(message.root.params)

    async def scenario() -> tuple[types.CreateTaskResult, list[TaskStatus], types.CallToolResult]:
        async with sdk_session(web_server.url, principal.token) as session:
            session._message_handler = collect  # the SDK calls it for every server notification
            created = await session.experimental.call_tool_as_task("demo.long_running", {"steps": 5, "step_s": 0.3})
            seen: list[TaskStatus] = [
                (s.status, s.statusMessage) async for s in session.experimental.poll_task(created.task.taskId)
            ]
            result = await session.experimental.get_task_result(created.task.taskId, types.CallToolResult)
            await anyio.sleep(0.5)  # the last status notification
        return created, seen, result

    # when a tool is called as a task and polled until it ends
    created, seen, result = anyio.run(scenario)

    # then the task is the job, submitted through the platform for this principal
    task_id = created.task.taskId
    job = Job.objects.get(pk=task_id)
    assert created.task.status == "working" and created.task.ttl and created.task.pollInterval == 200
    assert job.principal_id == principal.user.pk and job.status == "succeeded"
    assert job.idempotency_key and job.idempotency_key.startswith("mcp:")
    assert AuditStamp.objects.filter(job_id=task_id, event="submitted", actor="principal:agent").exists()
    # its progress showed as the status message, and it completed
    assert seen[-1] == ("completed", "succeeded")
    assert any(status == "working" and (message or "").startswith("step ") for status, message in seen), seen
    # the result is the job's result, structured and as text
    assert result.isError is False
    assert result.structuredContent == {"steps_done": 5}
    assert json.loads(result.content[0].text) == {"steps_done": 5}  # type: ignore[union-attr]
    assert result.meta == {"io.modelcontextprotocol/related-task": {"taskId": task_id}}
    # and status notifications reached the listening client (best effort, here it listens)
    assert [n.status for n in notifications if n.taskId == task_id][-1:] == ["completed"], notifications


def test_cancel_a_running_task(live: Any, web_server: Any, principal: Any) -> None:
    async def scenario() -> tuple[str, types.CancelTaskResult, McpError, types.CallToolResult]:
        async with sdk_session(web_server.url, principal.token) as session:
            created = await session.experimental.call_tool_as_task("demo.long_running",
                                                                   {"steps": 300, "step_s": 0.1})
            task_id = created.task.taskId
            await wait_task(session, task_id, lambda t: (t.statusMessage or "").startswith("step "))
            cancelled = await session.experimental.cancel_task(task_id)
            with pytest.raises(McpError) as again:
                await session.experimental.cancel_task(task_id)
            result = await session.experimental.get_task_result(task_id, types.CallToolResult)
        return task_id, cancelled, again.value, result

    # when a running task is cancelled, and then cancelled again
    task_id, cancelled, again, result = anyio.run(scenario)

    # then the answer is the task, already cancelled: the handler stopped cooperatively
    assert cancelled.status == "cancelled" and cancelled.taskId == task_id
    job = Job.objects.get(pk=task_id)
    assert job.status == "cancelled" and (job.result is None)
    events = list(AuditStamp.objects.filter(job_id=task_id).values_list("event", "actor"))
    assert ("cancel_requested", "principal:agent") in events
    # a second cancel of the terminal task is -32602
    assert again.error.code == types.INVALID_PARAMS
    # and its result is an error result saying so
    assert result.isError is True and result.structuredContent["status"] == "cancelled"  # type: ignore[index]


def test_cancel_a_task_whose_handler_ignores_it(live: Any, web_server: Any, principal: Any) -> None:
    async def scenario() -> tuple[str, types.CancelTaskResult, float]:
        async with sdk_session(web_server.url, principal.token) as session:
            created = await session.experimental.call_tool_as_task("demo.stubborn", {"sleep_s": 60})
            task_id = created.task.taskId
            await wait_task(session, task_id, lambda t: (t.statusMessage or "").startswith("running"))
            started = anyio.current_time()
            cancelled = await session.experimental.cancel_task(task_id)
            return task_id, cancelled, anyio.current_time() - started

    # when a running task whose handler never looks at cancellation is cancelled
    task_id, cancelled, took = anyio.run(scenario)

    # then the answer waited for the forced stop (grace 2 s here), and says cancelled
    assert cancelled.status == "cancelled" and took < 10, took
    forced = AuditStamp.objects.get(job_id=task_id, event="cancelled")
    assert forced.details["mode"] == "forced"


def test_list_tasks_pages_through_own_tasks(live: Any, web_server: Any, principal: Any, make_principal: Any) -> None:
    other = make_principal("other", ("demo:run",))

    async def scenario() -> tuple[list[str], list[list[str]], McpError]:
        async with sdk_session(web_server.url, other.token) as session:
            await session.experimental.call_tool_as_task("demo.noop", {})
        async with sdk_session(web_server.url, principal.token) as session:
            created = [(await session.experimental.call_tool_as_task("demo.noop", {})).task.taskId for _ in range(3)]
            pages: list[list[str]] = []
            cursor = None
            while True:
                page = await session.experimental.list_tasks(cursor)
                pages.append([t.taskId for t in page.tasks])
                cursor = page.nextCursor
                if cursor is None:
                    break
            with pytest.raises(McpError) as bad:
                await session.experimental.list_tasks("not-a-cursor")
        return created, pages, bad.value

    # when a principal with three tasks pages through tasks/list (page size 2 on this server)
    created, pages, bad = anyio.run(scenario)

    # then it sees its own three tasks, newest first, in two pages — never the other's
    assert [len(p) for p in pages] == [2, 1]
    assert [task_id for page in pages for task_id in page] == list(reversed(created))
    # and a cursor it was not given is -32602
    assert bad.error.code == types.INVALID_PARAMS


def test_call_without_tasks_answers_when_the_job_ends(live: Any, web_server: Any, principal: Any) -> None:
    seen_progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen_progress.append((progress, total, message))

    async def scenario() -> tuple[types.CallToolResult, types.CallToolResult, types.CallToolResult, McpError]:
        async with sdk_session(web_server.url, principal.token) as session:
            long = await session.call_tool("demo.long_running", {"steps": 4, "step_s": 0.3},
                                           progress_callback=on_progress)
            noop = await session.call_tool("demo.noop", {})
            invalid = await session.call_tool("demo.long_running", {"steps": 0})
            with pytest.raises(McpError) as unknown:
                await session.call_tool("demo.nope", {})
        return long, noop, invalid, unknown.value

    # when a client calls tools without tasks
    long, noop, invalid, unknown = anyio.run(scenario)

    # then each call answered with the job's result once the job had run on a worker
    assert long.isError is False and long.structuredContent == {"steps_done": 4}
    assert noop.isError is False and noop.structuredContent == {"ok": True}
    jobs = Job.objects.order_by("created_at")
    assert [j.job_type for j in jobs] == ["demo.long_running", "demo.noop"]
    assert all(j.status == "succeeded" and JobRun.objects.filter(job=j).exists() for j in jobs)
    # with progress notifications, always increasing, carrying the job's progress
    values = [value for value, _, _ in seen_progress]
    assert values == sorted(set(values)) and len(values) >= 2, seen_progress
    assert any((message or "").startswith("step ") for _, _, message in seen_progress), seen_progress
    assert all(total == 100.0 for _, total, _ in seen_progress)
    # invalid arguments are a tool error the model can correct; no job was recorded for them
    assert invalid.isError is True and invalid.structuredContent["code"] == "invalid_inputs"  # type: ignore[index]
    # and an unknown tool is a protocol error
    assert unknown.error.code == types.INVALID_PARAMS


def test_call_without_tasks_ends_with_an_error_when_cancelled_over_rest(live: Any, web_server: Any,
                                                                        principal: Any) -> None:
    async def scenario() -> tuple[types.CallToolResult, int]:
        answers: dict[str, Any] = {}
        async with (
            sdk_session(web_server.url, principal.token) as session,
            httpx.AsyncClient(base_url=web_server.url, headers=auth(principal.token, "Token")) as rest,
            anyio.create_task_group() as tg,
        ):
            async def call() -> None:
                answers["result"] = await session.call_tool("demo.long_running", {"steps": 300, "step_s": 0.1})

            tg.start_soon(call)
            with anyio.fail_after(30):
                while not (running := (await rest.get("/api/v1/jobs", params={"status": "running"})).json()["results"]):
                    await anyio.sleep(0.2)
            answers["cancel"] = (await rest.post(f"/api/v1/jobs/{running[0]['job_id']}/cancel")).status_code
        return answers["result"], answers["cancel"]

    # when the job of a waiting call is cancelled over REST
    result, cancel_status = anyio.run(scenario)

    # then the call ends with an error result naming the cancel
    assert cancel_status == 202
    assert result.isError is True
    assert result.structuredContent["status"] == "cancelled"  # type: ignore[index]
    assert Job.objects.get().status == "cancelled"


def test_approval_required_tool_waits_for_a_reviewer(live: Any, web_server: Any, principal: Any,
                                                     make_principal: Any) -> None:
    reviewer = make_principal("reviewer", ("approve:*",))

    async def scenario() -> tuple[str, types.GetTaskResult, types.CallToolResult, types.CallToolResult]:
        async with (
            sdk_session(web_server.url, principal.token) as session,
            httpx.AsyncClient(base_url=web_server.url, headers=auth(reviewer.token, "Token")) as review,
        ):
            # as a task: it parks before commit and says so
            created = await session.experimental.call_tool_as_task(
                "demo.reviewed_store_write", {"key": "k-mcp-task", "data": {"v": 1}})
            task_id = created.task.taskId
            waiting = await wait_task(session, task_id,
                                      lambda t: t.statusMessage == "waiting for approval before commit")
            approval_id = await pending_approval_id(review, task_id)
            answer = await review.post(f"/api/v1/approvals/{approval_id}/approve", json={"comment": "ok"})
            assert answer.status_code == 200, answer.text
            await wait_task(session, task_id, lambda t: t.status == "completed")
            as_task = await session.experimental.get_task_result(task_id, types.CallToolResult)

            # without tasks: the call itself waits through the review
            answers: dict[str, types.CallToolResult] = {}
            async with anyio.create_task_group() as tg:
                async def call() -> None:
                    answers["sync"] = await session.call_tool(
                        "demo.reviewed_store_write", {"key": "k-mcp-sync", "data": {"v": 2}})

                tg.start_soon(call)
                approval_id = await pending_approval_id(review, None, key="k-mcp-sync")
                answer = await review.post(f"/api/v1/approvals/{approval_id}/approve", json={"comment": "ok"})
                assert answer.status_code == 200, answer.text
        return task_id, waiting, as_task, answers["sync"]

    # when a high-risk tool is called and a second principal approves over REST
    task_id, waiting, as_task, sync = anyio.run(scenario)

    # then the task was working, waiting for approval, and completed after the approval
    assert waiting.status == "working" and waiting.pollInterval == 300
    assert as_task.isError is False and as_task.structuredContent["key"] == "k-mcp-task"  # type: ignore[index]
    assert sync.isError is False and sync.structuredContent["key"] == "k-mcp-sync"  # type: ignore[index]
    # and each wrote its record once, after the review
    assert ExternalRecord.objects.filter(key__in=["k-mcp-task", "k-mcp-sync"]).count() == 2
    assert AuditStamp.objects.filter(job_id=task_id, event="approved", actor="principal:reviewer").exists()


def test_another_principal_can_neither_see_nor_cancel_a_task(live: Any, web_server: Any, principal: Any,
                                                             make_principal: Any) -> None:
    intruder = make_principal("intruder", ("demo:*",))

    async def scenario() -> tuple[str, list[McpError], types.ListTasksResult, int]:
        async with sdk_session(web_server.url, principal.token) as owner:
            created = await owner.experimental.call_tool_as_task("demo.long_running", {"steps": 300, "step_s": 0.1})
            task_id = created.task.taskId
            errors = []
            async with sdk_session(web_server.url, intruder.token) as session:
                for attempt in (
                    session.experimental.get_task(task_id),
                    session.experimental.cancel_task(task_id),
                    session.experimental.get_task_result(task_id, types.CallToolResult),
                ):
                    with pytest.raises(McpError) as refused:
                        await attempt
                    errors.append(refused.value)
                listed = await session.experimental.list_tasks()
            # nor can the intruder use the owner's session (its id is the job's session) with its own token
            async with httpx.AsyncClient(base_url=web_server.url) as http:
                job = (await http.get(f"/api/v1/jobs/{task_id}", headers=auth(principal.token, "Token"))).json()
                hijack = await http.post(
                    "/mcp",
                    headers={**auth(intruder.token), "Mcp-Session-Id": job["session_id"],
                             "Accept": "application/json, text/event-stream"},
                    json={"jsonrpc": "2.0", "id": 9, "method": "tasks/get", "params": {"taskId": task_id}},
                )
            await owner.experimental.cancel_task(task_id)
        return task_id, errors, listed, hijack.status_code

    # when another principal asks for, cancels and fetches the task, and lists its own tasks
    task_id, errors, listed, hijack_status = anyio.run(scenario)

    # then every attempt is "task not found" and the list is empty
    assert [e.error.code for e in errors] == [types.INVALID_PARAMS] * 3
    assert all("not found" in e.error.message.lower() for e in errors)
    assert listed.tasks == []
    assert hijack_status == 404
    # and the owner's job ran on untouched until its owner cancelled it
    job = Job.objects.get(pk=task_id)
    assert job.status == "cancelled"
    assert AuditStamp.objects.filter(job_id=task_id, event="cancel_requested").values_list(
        "actor", flat=True).get() == "principal:agent"


def test_a_bad_token_is_refused(live: Any, web_server: Any, principal: Any) -> None:
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    headers = {"Accept": "application/json, text/event-stream"}
    # when initialize is sent without a token, with an unknown one, and with another scheme
    missing = httpx.post(f"{web_server.url}/mcp", json=initialize, headers=headers)
    bad = httpx.post(f"{web_server.url}/mcp", json=initialize, headers={**headers, **auth("nope")})
    basic = httpx.post(f"{web_server.url}/mcp", json=initialize,
                       headers={**headers, **auth(principal.token, "Basic")})
    # then each is refused with 401 before any MCP processing (no session is opened)
    for response in (missing, bad, basic):
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == 'Bearer realm="mcp"'
        assert "mcp-session-id" not in response.headers
    assert missing.json()["code"] == "not_authenticated"
    assert bad.json()["code"] == "authentication_failed"

    # and the SDK's client cannot get a session with a bad token
    async def scenario() -> None:
        async with sdk_session(web_server.url, "nope"):
            pass

    with pytest.raises(BaseException) as failed:  # the SDK raises an exception group
        anyio.run(scenario)
    assert "401" in repr(failed.value) or "Unauthorized" in repr(failed.value), failed.value
    assert Job.objects.count() == 0
