"""The ASGI entry point: ``/mcp`` is the MCP server (mcp_server), everything else is Django.

The MCP app also receives the lifespan events (Django's ASGI handler refuses them): its
session manager and status notifier start and stop with the server process.
"""

import os

from django.core.asgi import get_asgi_application
from starlette.types import Receive, Scope, Send

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

# Imported once Django is set up: the MCP server reads jobs through the ORM.
from mcp_server.server import mcp_asgi_app  # noqa: E402

MCP_PATH = "/mcp"
mcp_application = mcp_asgi_app()


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await mcp_application(scope, receive, send)
        return
    path = scope.get("path", "")
    if path == MCP_PATH or path.startswith(MCP_PATH + "/"):
        await mcp_application(scope, receive, send)
        return
    await django_application(scope, receive, send)  # type: ignore[arg-type]
