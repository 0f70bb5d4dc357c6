"""The Tasks extension (SEP-2663, ``io.modelcontextprotocol/tasks``), on the same mapping.

A client opts in per request: ``params._meta["io.modelcontextprotocol/clientCapabilities"]
["extensions"]["io.modelcontextprotocol/tasks"]``. Then

- ``tools/call`` answers a ``CreateTaskResult`` flattened into the result (``resultType:
  "task"``, ``taskId``, ``status``, ``ttlMs``, ``pollIntervalMs`` …) — every call becomes a
  task, since every call is a durable job;
- ``tasks/get`` answers the ``DetailedTask`` with the result (completed) or the JSON-RPC error
  (failed) inline, ``resultType: "complete"``;
- ``tasks/cancel`` answers an empty acknowledgement; the cancel itself is eventually consistent;
- ``tasks/update`` is acknowledged and its ``inputResponses`` ignored: a job never asks its
  requester for input (its human step is a reviewer's approval), so no key is ever outstanding.

``tools/call``, ``tasks/get`` and ``tasks/cancel`` reach the SDK's handlers (their params parse
as the 2025-11-25 requests, ``_meta`` included); ``tasks/update`` is unknown to mcp 1.26, so
:mod:`mcp_server.rawrpc` answers it as raw JSON-RPC before the SDK sees the body.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from mcp import types

from mcp_server.db import in_db
from mcp_server.selectors import task_job

EXTENSION_ID = "io.modelcontextprotocol/tasks"
CLIENT_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
MISSING_REQUIRED_CLIENT_CAPABILITY = -32021


def _meta_dict(meta: Any) -> dict[str, Any]:
    if meta is None:
        return {}
    if isinstance(meta, dict):
        return meta
    return dict(meta.model_dump(by_alias=True, exclude_none=True))


def opted_in(meta: Any) -> bool:
    """Whether a request's ``_meta`` declares the Tasks extension among its capabilities."""
    capabilities = _meta_dict(meta).get(CLIENT_CAPABILITIES_KEY)
    if not isinstance(capabilities, dict):
        return False
    extensions = capabilities.get("extensions")
    return isinstance(extensions, dict) and EXTENSION_ID in extensions


def missing_capability_error(method: str) -> types.ErrorData:
    return types.ErrorData(
        code=MISSING_REQUIRED_CLIENT_CAPABILITY,
        message=f"Missing required client capability: {method} needs the {EXTENSION_ID} extension",
        data={"requiredCapabilities": {"extensions": {EXTENSION_ID: {}}}},
    )


def ext_result(body: dict[str, Any], result_type: str = "complete") -> types.ServerResult:
    """A result carrying the extension's fields (mcp 1.26's ``Result`` allows extra fields)."""
    return types.ServerResult(types.EmptyResult.model_validate({"resultType": result_type, **body}))


# --- tasks/update (answered before the SDK, see mcp_server.rawrpc) ---------------------------


def rpc_error(request_id: Any, error: types.ErrorData) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.model_dump(exclude_none=True)}


async def tasks_update(principal: AbstractBaseUser, message: dict[str, Any]) -> dict[str, Any]:
    """``tasks/update``: -32021 without the extension, -32602 for an unknown task or a
    malformed request, otherwise an empty acknowledgement (no input is ever outstanding)."""
    request_id = message.get("id")
    params = message.get("params")
    params = params if isinstance(params, dict) else {}
    if not opted_in(params.get("_meta")):
        return rpc_error(request_id, missing_capability_error("tasks/update"))
    task_id = params.get("taskId")
    responses = params.get("inputResponses", {})
    if not isinstance(task_id, str) or not task_id or not isinstance(responses, dict):
        return rpc_error(request_id, types.ErrorData(
            code=types.INVALID_PARAMS, message="tasks/update needs a taskId and an inputResponses object"))
    job = await in_db(task_job, principal=principal, job_id=task_id)
    if job is None:
        return rpc_error(request_id, types.ErrorData(code=types.INVALID_PARAMS, message=f"Task not found: {task_id}"))
    return {"jsonrpc": "2.0", "id": request_id, "result": {"resultType": "complete"}}
