"""Writes for the MCP server: thin callers of the job services (blocking; run through
:func:`mcp_server.db.in_db`). A tool call is ``job_submit`` — the same validation, grants,
policy, stamps and idempotency as ``POST /api/v1/jobs`` — and a task cancel is ``job_cancel``."""

from __future__ import annotations

import hashlib
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, User

from jobs.models import Job
from jobs.services.control import job_cancel
from jobs.services.submit import SubmitResult, SubmitSpec, job_submit
from mcp_server.selectors import MCP_KEY_PREFIX

# The job's session when the MCP request has no session (it always has one once initialized).
NO_SESSION = "mcp"
KEY_LIMIT = 255


def mcp_idempotency_key(*, session_id: str, request_id: str | int) -> str | None:
    """``mcp:<session>:<request id>``: a retried call (same session, same request id) finds the
    job of the first try instead of submitting again; the id is hashed if it is too long."""
    if not session_id:
        return None
    key = f"{MCP_KEY_PREFIX}{session_id}:{request_id}"
    if len(key) > KEY_LIMIT:
        key = f"{MCP_KEY_PREFIX}{session_id}:#" + hashlib.sha256(str(request_id).encode()).hexdigest()
    return key


def tool_call_submit(
    *, principal: AbstractBaseUser, tool: str, arguments: dict[str, Any], session_id: str, request_id: str | int,
) -> SubmitResult:
    """Submit the job a ``tools/call`` asks for; the MCP session is the job's agent session."""
    spec = SubmitSpec(
        job_type=tool,
        inputs=arguments,
        session_id=session_id or NO_SESSION,
        idempotency_key=mcp_idempotency_key(session_id=session_id, request_id=request_id),
    )
    return job_submit(principal=principal, spec=spec)  # type: ignore[arg-type]


def actor_of(principal: AbstractBaseUser) -> str:
    return f"principal:{principal.get_username()}"


def task_cancel(*, principal: AbstractBaseUser | User, job: Job, reason: str) -> tuple[str, bool]:
    """Cancel the job behind a task: at once when it has not started, cooperatively (then
    forced after the grace) when it runs. Raises ``not_cancellable`` for a finished job."""
    return job_cancel(job=job, actor=actor_of(principal), reason=reason)
