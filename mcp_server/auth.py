"""Who is asking: the REST API's DRF tokens, refused with 401 before any MCP processing.

``Authorization: Bearer <token>`` (what MCP clients send) and ``Authorization: Token <token>``
(what the REST API documents) name the same token. The token's principal is the requester of
every job the session submits; it is put into the ASGI scope under :data:`PRINCIPAL_SCOPE_KEY`,
where the MCP handlers read it back through the SDK's request context.

An MCP session belongs to the principal that opened it: a request carrying another principal's
``Mcp-Session-Id`` is answered like an unknown session (404), so a leaked session id is worth
nothing without its token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from mcp.server.lowlevel.server import request_ctx
from mcp.shared.exceptions import McpError
from mcp.types import INVALID_REQUEST, ErrorData
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_server.db import in_db

PRINCIPAL_SCOPE_KEY = "jobplatform.principal"
SESSION_HEADER = "mcp-session-id"
SCHEMES = ("bearer", "token")


def principal_from_authorization(header: str) -> AbstractBaseUser | None:
    """The active principal owning the token in an ``Authorization`` header, or None.

    The token is checked by DRF's own ``TokenAuthentication`` (unknown token, inactive user),
    so ``/mcp`` and the REST API accept and refuse exactly the same tokens.
    """
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() not in SCHEMES or not key or " " in key:
        return None
    try:
        user, _token = TokenAuthentication().authenticate_credentials(key)
    except AuthenticationFailed:
        return None
    return user  # type: ignore[no-any-return]


def current_principal() -> AbstractBaseUser:
    """The principal of the HTTP request that carried the MCP request being handled."""
    try:
        request = request_ctx.get().request
    except LookupError:
        request = None
    principal = getattr(request, "scope", {}).get(PRINCIPAL_SCOPE_KEY) if request is not None else None
    if principal is None:  # only reachable if the app is mounted without TokenAuthMiddleware
        raise McpError(ErrorData(code=INVALID_REQUEST, message="not authenticated"))
    return principal  # type: ignore[no-any-return]


def current_session_id() -> str:
    """The ``Mcp-Session-Id`` of the request being handled ("" before the session exists)."""
    request = request_ctx.get().request
    headers = getattr(request, "headers", None)
    return str(headers.get(SESSION_HEADER, "")) if headers is not None else ""


@dataclass
class SessionOwners:
    """Which principal opened which MCP session (kept for the life of the process, like the
    SDK's own session table)."""

    owners: dict[str, int] = field(default_factory=dict)

    def bind(self, session_id: str, principal_id: int) -> None:
        self.owners.setdefault(session_id, principal_id)

    def owned_by(self, session_id: str, principal_id: int) -> bool:
        return self.owners.get(session_id) == principal_id

    def forget(self, session_id: str) -> None:
        self.owners.pop(session_id, None)


async def _json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    payload = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                    *headers],
    })
    await send({"type": "http.response.body", "body": payload})


class TokenAuthMiddleware:
    """ASGI middleware in front of the MCP transport: 401 without a valid token, 404 for a
    session of another principal, the principal in the scope otherwise."""

    def __init__(self, app: ASGIApp, owners: SessionOwners | None = None) -> None:
        self.app = app
        self.owners = owners or SessionOwners()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        authorization = headers.get("authorization", "")
        principal = await in_db(principal_from_authorization, authorization) if authorization else None
        if principal is None:
            await _json(
                send, 401,
                {"code": "authentication_failed" if authorization else "not_authenticated",
                 "detail": "Send 'Authorization: Bearer <token>' (or 'Token <token>') with a valid API token."},
                [(b"www-authenticate", b'Bearer realm="mcp"')],
            )
            return
        principal_id = int(principal.pk)
        session_id = headers.get(SESSION_HEADER)
        if session_id is not None and not self.owners.owned_by(session_id, principal_id):
            # The same answer the SDK gives for an unknown session: nothing to learn from it.
            await _json(send, 404, {"jsonrpc": "2.0", "id": "server-error",
                                    "error": {"code": INVALID_REQUEST, "message": "Session not found"}}, [])
            return

        status = 0

        async def send_and_bind(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if session_id is None:
                    new_id = Headers(raw=message.get("headers", [])).get(SESSION_HEADER)
                    if new_id:
                        # Bound before the client sees the id, so no request can beat it.
                        self.owners.bind(new_id, principal_id)
            await send(message)

        await self.app({**scope, PRINCIPAL_SCOPE_KEY: principal}, receive, send_and_bind)
        if scope.get("method") == "DELETE" and session_id is not None and 200 <= status < 300:
            self.owners.forget(session_id)
