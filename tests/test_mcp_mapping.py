"""The one mapping from jobs to MCP (statuses, messages, results, tools), the MCP token parsing
and the task list's cursor — without a server."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from jobs.models import Job, JobStatus
from jobs.registry import AckPoint, JobType, Risk, registry
from mcp_server.auth import principal_from_authorization
from mcp_server.mapping import (
    TASK_STATUS_BY_JOB_STATUS,
    call_result_for,
    ext_detailed_task,
    needs_task,
    status_message,
    task_for,
)
from mcp_server.selectors import BadCursor, task_jobs_page
from mcp_server.services import mcp_idempotency_key


def job(**fields: Any) -> Job:
    defaults: dict[str, Any] = {"id": "job_x", "job_type": "demo.noop", "status": JobStatus.QUEUED,
                                "stage": "execute", "created_at": timezone.now(), "updated_at": timezone.now()}
    return Job(**{**defaults, **fields})


def test_every_job_status_has_a_task_status() -> None:
    assert set(TASK_STATUS_BY_JOB_STATUS) == set(JobStatus.values)
    assert {s: TASK_STATUS_BY_JOB_STATUS[s] for s in JobStatus.values} == {
        "blocked": "failed", "pending_approval": "working", "queued": "working", "running": "working",
        "retry_scheduled": "working", "succeeded": "completed", "dead_lettered": "failed", "cancelled": "cancelled",
    }


@pytest.mark.parametrize(("fields", "message"), [
    ({"status": "pending_approval", "approval_checkpoint": "before_commit"}, "waiting for approval before commit"),
    ({"status": "pending_approval", "approval_checkpoint": "before_execute"}, "waiting for approval before execute"),
    ({"status": "running", "progress_pct": 3.0, "progress_message": "step 3/100"}, "step 3/100"),
    ({"status": "running", "progress_pct": 42.4}, "42%"),
    ({"status": "running", "cancel_requested_at": timezone.now()}, "cancelling"),
    ({"status": "queued"}, "queued, waiting for a worker"),
    ({"status": "retry_scheduled", "attempts": 1, "max_attempts": 3},
     "retrying after a transient error (attempt 1 of 3)"),
    ({"status": "dead_lettered", "error_class": "permanent", "error": "boom"}, "dead-lettered (permanent): boom"),
    ({"status": "blocked", "reason": "policy: no"}, "blocked: policy: no"),
    ({"status": "cancelled", "reason": "approval denied"}, "cancelled: approval denied"),
    ({"status": "succeeded"}, "succeeded"),
])
def test_status_messages_say_what_the_job_is_doing(fields: dict[str, Any], message: str) -> None:
    assert status_message(job(**fields)) == message


def test_a_task_is_its_job() -> None:
    task = task_for(job(status="pending_approval", approval_checkpoint="before_commit"))
    assert (task.taskId, task.status, task.ttl) == ("job_x", "working", 30 * 24 * 3600 * 1000)
    assert task.pollInterval == 5000  # a human is slower than a worker


def test_results_of_finished_jobs() -> None:
    done = call_result_for(job(status="succeeded", result={"n": 1}))
    assert (done.isError, done.structuredContent, done.content[0].text) == (False, {"n": 1}, '{"n": 1}')  # type: ignore[union-attr]
    failed = call_result_for(job(status="dead_lettered", error_class="timeout", error="too slow"))
    assert failed.isError is True
    assert failed.structuredContent == {"job_id": "job_x", "status": "dead_lettered", "error_class": "timeout",
                                        "error": "too slow"}
    blocked = ext_detailed_task(job(status="blocked", reason="missing permissions: x:y"))
    assert blocked["status"] == "failed" and blocked["error"]["code"] == -32603
    assert blocked["error"]["data"]["code"] == "permission_denied"
    completed = ext_detailed_task(job(status="succeeded", result=[1, 2]))
    assert completed["result"]["structuredContent"] == {"result": [1, 2]} and "error" not in completed


def test_tasks_are_required_for_human_or_long_work() -> None:
    class Quick(JobType):
        name = "t.quick"

    class Reviewed(JobType):
        name = "t.reviewed"
        ack = AckPoint.BEFORE_COMMIT

    class Risky(JobType):
        name = "t.risky"
        risk = Risk.CRITICAL

    class Long(JobType):
        name = "t.long"
        max_runtime_s = 61

    assert [needs_task(t) for t in (Quick, Reviewed, Risky, Long)] == [False, True, True, True]
    assert needs_task(registry.all()["demo.noop"]) is False


def test_idempotency_key_of_a_tool_call() -> None:
    assert mcp_idempotency_key(session_id="abc", request_id=7) == "mcp:abc:7"
    assert mcp_idempotency_key(session_id="", request_id=7) is None
    long_key = mcp_idempotency_key(session_id="abc", request_id="r" * 400)
    assert long_key is not None and len(long_key) <= 255 and long_key.startswith("mcp:abc:#")


@pytest.mark.django_db
def test_tokens_in_either_scheme(principal: Any) -> None:
    for header in (f"Bearer {principal.token}", f"Token {principal.token}", f"bearer  {principal.token} "):
        user = principal_from_authorization(header)
        assert user is not None and user.pk == principal.user.pk, header
    for header in ("", "Bearer", "Bearer nope", f"Basic {principal.token}", f"Bearer {principal.token} x"):
        assert principal_from_authorization(header) is None, header
    principal.user.is_active = False
    principal.user.save()
    assert principal_from_authorization(f"Bearer {principal.token}") is None


@pytest.mark.django_db
def test_a_cursor_this_server_did_not_issue_is_refused(principal: Any) -> None:
    for cursor in ("garbage!", "bm8tcGlwZQ", "MjAyNi0wMS0wMQ"):
        with pytest.raises(BadCursor):
            task_jobs_page(principal=principal.user, cursor=cursor)
    assert task_jobs_page(principal=principal.user, cursor=None) == ([], None)
