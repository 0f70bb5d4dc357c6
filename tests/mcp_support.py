"""A real ASGI server (uvicorn, ``config.asgi:application``) on the test database, and MCP
clients for it: the official SDK's client over Streamable HTTP, and raw JSON-RPC over httpx."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests import harness

# Short server-side timings so waits end within a test's budget.
WEB_ENV = {
    "MCP_WAIT_POLL_S": "0.1",
    "MCP_STATUS_NOTIFY_S": "0.2",
    "MCP_POLL_INTERVAL_MS": "200",
    "MCP_APPROVAL_POLL_INTERVAL_MS": "300",
    "MCP_LIST_PAGE_SIZE": "2",
    "MCP_SYNC_WAIT_GRACE_S": "5",
}
EXT = "io.modelcontextprotocol/tasks"
EXT_META: dict[str, Any] = {"io.modelcontextprotocol/clientCapabilities": {"extensions": {EXT: {}}}}


@dataclass
class WebServer:
    proc: harness.Proc
    url: str

    def stop(self) -> None:
        self.proc.stop(timeout=10)


def start_web(env: dict[str, str] | None = None, timeout: float = 60.0) -> WebServer:
    """uvicorn on a free loopback port; ready when ``/mcp`` answers (401 without a token)."""
    port = harness.free_port()
    proc = harness._spawn(
        "web",
        [harness.PYTHON, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--lifespan", "on", "--log-level", "info"],
        harness.child_env(**{**WEB_ENV, **(env or {})}),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"uvicorn exited:\n{proc.log()[-4000:]}")
        try:
            if httpx.get(f"{url}/mcp", timeout=1).status_code == 401:
                return WebServer(proc, url)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.stop()
    raise RuntimeError(f"uvicorn not ready in {timeout}s:\n{proc.log()[-4000:]}")


def auth(token: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}"}


@asynccontextmanager
async def sdk_session(url: str, token: str, scheme: str = "Bearer") -> AsyncIterator[ClientSession]:
    """An initialized session of the official SDK's client (Streamable HTTP)."""
    timeout = httpx.Timeout(30.0, read=300.0)
    async with (
        httpx.AsyncClient(headers=auth(token, scheme), timeout=timeout, follow_redirects=True) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write, _session_id),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


# --- raw JSON-RPC -------------------------------------------------------------------------------


def parse_rpc_body(response: httpx.Response) -> list[dict[str, Any]]:
    """JSON-RPC messages of a response, whether JSON or an SSE stream."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        lines = response.text.splitlines()
        return [json.loads(line[5:]) for line in lines if line.startswith("data:") and line[5:].strip()]
    body = response.json()
    return body if isinstance(body, list) else [body]


@dataclass
class RawMcp:
    """JSON-RPC by hand: initialize, then requests with chosen ids and ``_meta``."""

    url: str
    token: str
    client: httpx.Client = field(init=False)
    session_id: str = ""
    next_id: int = 100

    def __post_init__(self) -> None:
        self.client = httpx.Client(timeout=httpx.Timeout(30.0, read=120.0))

    def headers(self) -> dict[str, str]:
        headers = {**auth(self.token), "Accept": "application/json, text/event-stream",
                   "Content-Type": "application/json"}
        if self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
            headers["Mcp-Protocol-Version"] = "2025-11-25"
        return headers

    def post(self, message: dict[str, Any]) -> httpx.Response:
        return self.client.post(f"{self.url}/mcp", headers=self.headers(), content=json.dumps(message))

    def initialize(self) -> RawMcp:
        response = self.post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw-test", "version": "0"}}})
        assert response.status_code == 200, response.text
        self.session_id = response.headers["mcp-session-id"]
        assert self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
        return self

    def request(self, method: str, params: dict[str, Any] | None = None, *, ext: bool = True,
                request_id: int | str | None = None) -> dict[str, Any]:
        """One request; the JSON-RPC response (``result`` or ``error``)."""
        if request_id is None:
            self.next_id += 1
            request_id = self.next_id
        params = dict(params or {})
        if ext:
            params["_meta"] = {**params.get("_meta", {}), **EXT_META}
        response = self.post({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        assert response.status_code == 200, (response.status_code, response.text)
        replies = [m for m in parse_rpc_body(response) if m.get("id") == request_id]
        assert len(replies) == 1, parse_rpc_body(response)
        return replies[0]

    def result(self, method: str, params: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        reply = self.request(method, params, **kwargs)
        assert "result" in reply, reply
        return dict(reply["result"])

    def error(self, method: str, params: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        reply = self.request(method, params, **kwargs)
        assert "error" in reply, reply
        return dict(reply["error"])

    def close(self) -> None:
        self.client.close()


def wait_for(predicate: Any, *, timeout: float = 30.0, interval: float = 0.2, message: str = "condition") -> Any:
    return harness.wait_until(predicate, timeout=timeout, interval=interval, message=message)
