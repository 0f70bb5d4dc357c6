"""Blocking ORM work from the MCP server's event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

P = ParamSpec("P")
T = TypeVar("T")


def _with_connection_hygiene(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    # What Django does around every request (request_started / request_finished): a connection
    # past CONN_MAX_AGE or broken is dropped instead of reused.
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()


async def in_db(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn`` in a worker thread of the loop's executor.

    Not thread-sensitive: MCP requests wait for jobs concurrently, and one shared thread would
    queue every request's reads behind each other. Each executor thread keeps its own
    connection, so the executor's size bounds the connections the MCP server holds.
    """
    return await sync_to_async(_with_connection_hygiene, thread_sensitive=False)(fn, *args, **kwargs)
