"""The Tasks extension (SEP-2663, ``io.modelcontextprotocol/tasks``) and the protocol edges,
as raw JSON-RPC over HTTP (httpx) against a real uvicorn server and real workers: a tool call
answered with a task, ``tasks/get`` with the result or error inline, ``tasks/cancel``,
``tasks/update``, the approval wait, isolation between principals, refused tokens, a call
without tasks, a retried request, and ``notifications/cancelled``."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from audit.models import AuditStamp
from examples.models import ExternalRecord
from jobs.models import Job
from tests.conftest import wait_status
from tests.mcp_support import EXT_META, RawMcp, auth, parse_rpc_body, wait_for

pytestmark = pytest.mark.integration

INVALID_PARAMS = -32602
MISSING_CAPABILITY = -32021


@pytest.fixture
def raw(web_server: Any, principal: Any) -> Any:
    clients: list[RawMcp] = []

    def make(token: str | None = None) -> RawMcp:
        client = RawMcp(web_server.url, token or principal.token).initialize()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def call(mcp: RawMcp, tool: str, arguments: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return mcp.result("tools/call", {"name": tool, "arguments": arguments}, **kwargs)


def poll(mcp: RawMcp, task_id: str, until: Any, timeout: float = 30.0) -> dict[str, Any]:
    """tasks/get (with the extension) until ``until(task)`` holds; that task."""

    def check() -> dict[str, Any] | None:
        task = mcp.result("tasks/get", {"taskId": task_id})
        return task if until(task) else None

    return dict(wait_for(check, timeout=timeout, message=f"task {task_id}"))


def test_tool_call_is_a_task_with_its_result_inline(live: Any, raw: Any) -> None:
    mcp = raw()
    # when a client declaring the extension calls a tool
    created = call(mcp, "demo.long_running", {"steps": 4, "step_s": 0.2})
    # then the answer is the task, flattened, marked as one
    assert created["resultType"] == "task"
    assert created["status"] == "working" and created["taskId"].startswith("job_")
    assert created["ttlMs"] == 30 * 24 * 3600 * 1000 and created["pollIntervalMs"] == 200
    datetime.fromisoformat(created["createdAt"])
    assert Job.objects.filter(pk=created["taskId"]).exists()  # stored before it was answered
    # and tasks/get carries the result inline once it completed
    done = poll(mcp, created["taskId"], lambda t: t["status"] != "working")
    assert done["resultType"] == "complete" and done["status"] == "completed"
    assert done["result"]["structuredContent"] == {"steps_done": 4}
    assert json.loads(done["result"]["content"][0]["text"]) == {"steps_done": 4}
    assert done["result"]["isError"] is False and "error" not in done


def test_a_failed_job_is_a_failed_task_with_its_error_inline(live: Any, raw: Any) -> None:
    mcp = raw()
    created = call(mcp, "demo.flaky", {"permanent": True})
    failed = poll(mcp, created["taskId"], lambda t: t["status"] != "working")
    assert failed["status"] == "failed" and "result" not in failed
    assert failed["error"]["code"] == -32603
    assert failed["error"]["data"] == {"job_id": created["taskId"], "status": "dead_lettered",
                                       "error_class": "permanent", "reason": failed["error"]["data"]["reason"],
                                       "error": failed["error"]["data"]["error"]}
    assert "asked to fail permanently" in failed["statusMessage"]


def test_a_blocked_call_is_a_failed_task(live: Any, raw: Any, make_principal: Any) -> None:
    # given a principal without the store grant calling the store tool anyway
    mcp = raw(make_principal("nostore", ("demo:run",)).token)
    created = call(mcp, "demo.local_store_write", {"key": "k", "data": {}})
    # then the job is recorded blocked and the task failed from the start
    assert created["status"] == "failed" and created["statusMessage"].startswith("blocked: missing permissions")
    assert Job.objects.get(pk=created["taskId"]).status == "blocked"
    got = mcp.result("tasks/get", {"taskId": created["taskId"]})
    assert got["error"]["data"]["code"] == "permission_denied"


def test_cancel_a_running_task(live: Any, raw: Any) -> None:
    mcp = raw()
    created = call(mcp, "demo.long_running", {"steps": 300, "step_s": 0.1})
    task_id = created["taskId"]
    poll(mcp, task_id, lambda t: t["statusMessage"].startswith("step "))
    # when it is cancelled: an empty acknowledgement, the cancel itself follows
    assert mcp.result("tasks/cancel", {"taskId": task_id}) == {"resultType": "complete"}
    cancelled = poll(mcp, task_id, lambda t: t["status"] != "working")
    assert cancelled["status"] == "cancelled" and "result" not in cancelled and "error" not in cancelled
    assert Job.objects.get(pk=task_id).status == "cancelled"
    # and cancelling the terminal task is -32602, as in 2025-11-25
    assert mcp.error("tasks/cancel", {"taskId": task_id})["code"] == INVALID_PARAMS


def test_tasks_update(live: Any, raw: Any) -> None:
    mcp = raw()
    created = call(mcp, "demo.noop", {})
    # a client that does not declare the extension: -32021 naming it
    missing = mcp.error("tasks/update", {"taskId": created["taskId"], "inputResponses": {}}, ext=False)
    assert missing["code"] == MISSING_CAPABILITY
    assert missing["data"] == {"requiredCapabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}}}
    # an unknown task: -32602
    assert mcp.error("tasks/update", {"taskId": "job_nope", "inputResponses": {}})["code"] == INVALID_PARAMS
    # a known task: acknowledged; a job never waits for its requester's input, so nothing changes
    ack = mcp.result("tasks/update", {"taskId": created["taskId"], "inputResponses": {"x": {"action": "accept"}}})
    assert ack == {"resultType": "complete"}


def test_approval_required_tool_waits_for_a_reviewer(live: Any, raw: Any, make_principal: Any) -> None:
    reviewer = make_principal("reviewer", ("approve:*",))
    mcp = raw()
    created = call(mcp, "demo.reviewed_store_write", {"key": "k-ext", "data": {"v": 1}})
    task_id = created["taskId"]
    # the task waits for a human: working, a longer poll interval, and says why
    waiting = poll(mcp, task_id, lambda t: t["statusMessage"] == "waiting for approval before commit")
    assert waiting["status"] == "working" and waiting["pollIntervalMs"] == 300
    # a reviewer approves over REST
    with httpx.Client(base_url=mcp.url, headers=auth(reviewer.token, "Token")) as review:
        pending = review.get("/api/v1/approvals", params={"status": "pending"}).json()["results"]
        approval_id = next(a["approval_id"] for a in pending if a["job_id"] == task_id)
        assert review.post(f"/api/v1/approvals/{approval_id}/approve", json={"comment": "ok"}).status_code == 200
    # then the task completes with the commit's result inline
    done = poll(mcp, task_id, lambda t: t["status"] != "working")
    assert done["status"] == "completed" and done["result"]["structuredContent"]["key"] == "k-ext"
    assert ExternalRecord.objects.filter(key="k-ext").count() == 1


def test_another_principal_can_neither_see_nor_cancel_a_task(live: Any, raw: Any, make_principal: Any) -> None:
    owner = raw()
    intruder = raw(make_principal("intruder", ("demo:*",)).token)
    task_id = call(owner, "demo.long_running", {"steps": 300, "step_s": 0.1})["taskId"]
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("tasks/get", {}), ("tasks/cancel", {}), ("tasks/update", {"inputResponses": {}}),
    ]
    for method, params in attempts:
        error = intruder.error(method, {"taskId": task_id, **params})
        assert error["code"] == INVALID_PARAMS and "not found" in error["message"].lower(), (method, error)
    # nor through the 2025-11-25 methods without the extension
    assert intruder.error("tasks/get", {"taskId": task_id}, ext=False)["code"] == INVALID_PARAMS
    assert intruder.result("tasks/list", {}, ext=False)["tasks"] == []
    assert owner.result("tasks/get", {"taskId": task_id})["status"] == "working"
    owner.result("tasks/cancel", {"taskId": task_id})
    wait_status(task_id, "cancelled")


def test_a_bad_token_is_refused(live: Any, web_server: Any, principal: Any) -> None:
    mcp = RawMcp(web_server.url, "nope")
    try:
        message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "demo.noop", "arguments": {}, "_meta": EXT_META}}
        refused = mcp.post(message)
        assert refused.status_code == 401 and refused.json()["code"] == "authentication_failed"
        # "Token <key>" is accepted like "Bearer <key>"
        mcp.token = principal.token
        response = mcp.client.post(f"{web_server.url}/mcp", content=json.dumps({
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}),
            headers={**auth(principal.token, "Token"), "Accept": "application/json, text/event-stream",
                     "Content-Type": "application/json"})
        assert response.status_code == 200 and response.headers["mcp-session-id"]
    finally:
        mcp.close()
    assert Job.objects.count() == 0


def test_call_without_tasks_answers_with_the_result(live: Any, raw: Any) -> None:
    mcp = raw()
    # without the extension and without params.task, the answer is the tool's result
    result = call(mcp, "demo.noop", {}, ext=False)
    assert result == {"content": [{"type": "text", "text": '{"ok": true}'}], "structuredContent": {"ok": True},
                      "isError": False}
    assert Job.objects.get().status == "succeeded"


def test_a_retried_request_does_not_submit_twice(live: Any, raw: Any) -> None:
    mcp = raw()
    first = call(mcp, "demo.noop", {}, request_id=4242)
    again = call(mcp, "demo.noop", {}, request_id=4242)
    other = call(mcp, "demo.noop", {}, request_id=4243)
    # the same session and request id find the first job; another request id is another job
    assert again["taskId"] == first["taskId"] != other["taskId"]
    assert Job.objects.count() == 2
    assert Job.objects.get(pk=first["taskId"]).idempotency_key == f"mcp:{mcp.session_id}:4242"
    # a retry of a call without tasks answers the first job's result, without a new job
    assert call(mcp, "demo.noop", {}, request_id=4242, ext=False)["structuredContent"] == {"ok": True}
    assert Job.objects.count() == 2


def test_notifications_cancelled_cancels_the_job(live: Any, raw: Any) -> None:
    mcp = raw()
    request = {"jsonrpc": "2.0", "id": 77, "method": "tools/call",
               "params": {"name": "demo.long_running", "arguments": {"steps": 300, "step_s": 0.1}}}
    replies: list[dict[str, Any]] = []

    def long_call() -> None:
        with httpx.Client(timeout=60) as client:
            response = client.post(f"{mcp.url}/mcp", headers=mcp.headers(), content=json.dumps(request))
            replies.extend(parse_rpc_body(response))

    # given a call without tasks waiting on a running job
    caller = threading.Thread(target=long_call)
    caller.start()
    job = wait_for(lambda: Job.objects.filter(status="running").first(), message="the job to run")
    time.sleep(0.3)
    # when the client cancels its request
    notice = mcp.post({"jsonrpc": "2.0", "method": "notifications/cancelled",
                       "params": {"requestId": 77, "reason": "user stopped it"}})
    assert notice.status_code == 202
    caller.join(timeout=30)
    # then the request ends and the job is cancelled, by the principal
    assert not caller.is_alive()
    assert [r["error"]["message"] for r in replies if r.get("id") == 77] == ["Request cancelled"]
    wait_status(job.pk, "cancelled")
    asked = AuditStamp.objects.get(job_id=job.pk, event="cancel_requested")
    assert asked.actor == "principal:agent" and "notifications/cancelled" in asked.details["reason"]


def test_an_oversized_body_is_refused(live: Any, raw: Any) -> None:
    mcp = raw()
    big = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
           "params": {"name": "demo.noop", "arguments": {"pad": "x" * (1024 * 1024 + 10)}}}
    response = mcp.post(big)
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"
    assert Job.objects.count() == 0
