"""JSON-RPC seen before the SDK: one ASGI layer between authentication and the transport.

It reads a POST body once (refusing one above ``API_MAX_BODY_BYTES`` with 413, as the REST API
does) and then

- answers the extension methods mcp 1.26 does not know (``tasks/update``) itself;
- notes every ``notifications/cancelled`` (session, request id) in :data:`client_cancels`
  before the SDK cancels the request's handler, so the handler can tell a client's cancel —
  which cancels the job — from a server shutdown, which must not;
- hands everything to the SDK with the body replayed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_server.auth import PRINCIPAL_SCOPE_KEY, SESSION_HEADER
from mcp_server.extension import tasks_update

RAW_METHODS = {"tasks/update": tasks_update}


@dataclass
class ClientCancels:
    """``notifications/cancelled`` received, by (session id, request id), for a minute."""

    keep_s: float = 60.0
    seen: dict[tuple[str, str], float] = field(default_factory=dict)

    @staticmethod
    def key(session_id: str, request_id: Any) -> tuple[str, str]:
        return session_id, json.dumps(request_id)  # 5 and "5" are different JSON-RPC ids

    def note(self, session_id: str, request_id: Any) -> None:
        now = time.monotonic()
        for stale in [k for k, at in self.seen.items() if now - at > self.keep_s]:
            self.seen.pop(stale, None)
        self.seen[self.key(session_id, request_id)] = now

    def pop(self, session_id: str, request_id: Any) -> bool:
        return self.seen.pop(self.key(session_id, request_id), None) is not None


client_cancels = ClientCancels()


async def send_json(send: Send, status: int, body: Any) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class _ClientGone(Exception):
    pass


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None when it is larger than ``limit``."""
    try:
        declared = int(Headers(scope=scope).get("content-length") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return None
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body", False):
            return body


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class RawJsonRpc:
    def __init__(self, app: ASGIApp, cancels: ClientCancels | None = None) -> None:
        self.app = app
        self.cancels = cancels or client_cancels

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        limit = int(settings.API_MAX_BODY_BYTES)
        try:
            body = await _read_body(scope, receive, limit)
        except _ClientGone:
            return
        if body is None:
            await send_json(send, 413, {"code": "payload_too_large", "detail": f"Request body exceeds {limit} bytes."})
            return
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        messages = parsed if isinstance(parsed, list) else [parsed]
        session_id = Headers(scope=scope).get(SESSION_HEADER, "")
        for message in messages:
            if isinstance(message, dict) and message.get("method") == "notifications/cancelled":
                params = message.get("params")
                if isinstance(params, dict) and "requestId" in params:
                    self.cancels.note(session_id, params["requestId"])
        if isinstance(parsed, dict) and parsed.get("method") in RAW_METHODS and "id" in parsed:
            handler = RAW_METHODS[str(parsed["method"])]
            await send_json(send, 200, await handler(scope[PRINCIPAL_SCOPE_KEY], parsed))
            return
        await self.app(scope, _replay(body, receive), send)
