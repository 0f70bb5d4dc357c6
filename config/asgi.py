"""The ASGI application the web tier runs (uvicorn; ``manage.py runplatform`` starts it).

It is Django's ASGI handler with two differences, both so that a waiting request costs nothing
but a coroutine:

1. **Database pool.** Under ASGI each request's synchronous code (the DRF views, middleware
   hooks) runs in a thread of its own; a persistent per-thread connection would be a new
   connection per request. ``DATABASE_POOL`` defaults to on here (``config/settings.py``): a
   request borrows a pooled connection and gives it back when it ends.
2. **No per-request thread for long-lived requests.** Django wraps every request in a
   ``ThreadSensitiveContext``, i.e. a thread for its synchronous parts that lives until the
   request ends — for an event stream open for minutes, an idle thread per stream. Event streams
   (a path ending in ``/events``) and ``Prefer: wait=…`` requests skip it: their few synchronous
   hooks (request signals, middleware) run on the process's shared thread, and their database
   work runs on the small executor of ``jobs.api.hub``, so a thousand open streams hold a
   thousand coroutines, not a thousand threads or connections.
"""

import os
from typing import Any

import django
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DATABASE_POOL", "1")


def holds_request(scope: dict[str, Any]) -> bool:
    """Whether the request may wait long: an event stream or a ``Prefer: wait`` request."""
    if str(scope.get("path", "")).endswith("/events"):
        return True
    return any(name == b"prefer" and b"wait" in value.lower() for name, value in scope.get("headers", ()))


class PlatformASGIHandler(ASGIHandler):
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and holds_request(scope):
            await self.handle(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


django.setup(set_prefix=False)
application = PlatformASGIHandler()
