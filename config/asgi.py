"""The ASGI application the web tier runs (uvicorn; ``manage.py runplatform`` starts it).

It is Django's ASGI handler with three differences, so that a waiting request costs nothing but
a coroutine and an ordinary one costs no more than under a threaded WSGI server:

1. **Database pool.** Under ASGI each request's synchronous code (the DRF views, middleware
   hooks) runs in a thread of its own; a persistent per-thread connection would be a new
   connection per request. ``DATABASE_POOL`` defaults to on here (``config/settings.py``): a
   request borrows a pooled connection and gives it back when it ends.
2. **Long-lived requests** — event streams (a path ending in ``/events``) and ``Prefer: wait``
   requests — run through Django's async middleware chain to the async views of
   ``jobs/api/live.py``, and without the per-request thread Django gives every request (a
   ``ThreadSensitiveContext``, whose thread would sit idle for as long as a stream is open):
   their few synchronous hooks (request signals, middleware) run on the process's shared thread,
   their database work on the small executor of ``jobs.api.hub``. A thousand open streams hold
   a thousand coroutines, not a thousand threads or connections.
3. **Every other request** goes through the same middleware in their synchronous form, in its
   request thread, as a threaded WSGI server would run it: one hop off the event loop per
   request instead of two per middleware.

In front of it, a path router: ``/mcp`` is the MCP server (``mcp_server``, docs/mcp.md), which
also receives the lifespan events (Django's ASGI handler refuses them), so its session manager
and status notifier start and stop with the server process.
"""

import os
from typing import Any

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.http import HttpRequest, HttpResponseBase

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DATABASE_POOL", "1")


def holds_request(path: str, prefer: str) -> bool:
    """Whether a request may wait long: an event stream, or one that asks to wait (RFC 7240)."""
    return path.endswith("/events") or "wait" in prefer.lower()


def _scope_prefer(scope: dict[str, Any]) -> str:
    return ",".join(value.decode("latin-1") for name, value in scope.get("headers", ()) if name == b"prefer")


class PlatformASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()  # the async middleware chain, for long-lived requests
        self._sync_handler = BaseHandler()
        self._sync_handler.load_middleware(is_async=False)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and holds_request(str(scope.get("path", "")), _scope_prefer(scope)):
            await self.handle(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        if holds_request(request.path, request.headers.get("Prefer", "")):
            return await super().get_response_async(request)
        response: HttpResponseBase = await sync_to_async(self._sync_handler.get_response, thread_sensitive=True)(
            request)
        return response


django.setup(set_prefix=False)
django_application = PlatformASGIHandler()

# Imported once Django is set up: the MCP server reads jobs through the ORM.
from mcp_server.server import mcp_asgi_app  # noqa: E402

MCP_PATH = "/mcp"
mcp_application = mcp_asgi_app()


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await mcp_application(scope, receive, send)
        return
    path = scope.get("path", "")
    if path == MCP_PATH or path.startswith(MCP_PATH + "/"):
        await mcp_application(scope, receive, send)
        return
    await django_application(scope, receive, send)
