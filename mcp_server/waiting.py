"""Waiting for a job: the one place the MCP server waits for a job to move.

A call without tasks, ``tasks/result``, ``tasks/cancel`` and the task store's
``wait_for_update`` all wait here. Today the wait re-reads the job through the jobs selectors
every ``MCP_WAIT_POLL_S`` (0.3 s); a change made by this process (a cancel) wakes it at once
through :func:`job_changed`. When status changes are published (a Redis wake-up), only this
module changes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser

from jobs.models import Job
from mcp_server.db import in_db
from mcp_server.selectors import task_job

# Called with the job as just read; returning True ends the wait early.
OnPoll = Callable[[Job], Awaitable[bool]]

_wakeups: dict[str, set[anyio.Event]] = {}


def job_changed(job_id: str) -> None:
    """Wake every wait on ``job_id`` in this process now (call from the event loop)."""
    for event in _wakeups.get(job_id, set()):
        event.set()


async def job_wait_terminal(
    *, principal: AbstractBaseUser, job_id: str, timeout: float | None, on_poll: OnPoll | None = None,
) -> Job | None:
    """Wait until the principal's job ``job_id`` is terminal and return it.

    Steps: (1) read the job (the principal's own only); gone or not theirs → None; (2) hand it
    to ``on_poll`` (progress notifications, change detection), which may end the wait; (3) a
    terminal job is returned; (4) otherwise sleep ``MCP_WAIT_POLL_S`` or until
    :func:`job_changed`, and repeat until ``timeout`` seconds have passed — then the job is
    returned as last read, not terminal. Cancelling the caller cancels the wait.
    """
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    interval = float(settings.MCP_WAIT_POLL_S)
    event = anyio.Event()
    waiters = _wakeups.setdefault(job_id, set())
    waiters.add(event)
    try:
        while True:
            job = await in_db(task_job, principal=principal, job_id=job_id)
            if job is None:
                return None
            if on_poll is not None and await on_poll(job):
                return job
            if job.is_terminal:
                return job
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return job
            with anyio.move_on_after(interval if remaining is None else min(interval, remaining)):
                await event.wait()
            if event.is_set():
                waiters.discard(event)
                event = anyio.Event()
                waiters.add(event)
    finally:
        waiters.discard(event)
        if not waiters:
            _wakeups.pop(job_id, None)
