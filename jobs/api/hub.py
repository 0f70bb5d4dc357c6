"""Waiting on jobs without a thread, a connection or a poll per waiter.

An open event stream or a ``Prefer: wait`` request registers a :class:`Watch` on its job with the
process's :class:`WakeupHub` and awaits it. The hub runs two tasks on the event loop:

1. **the subscriber** — one Redis pub/sub connection per web process, on the channel where
   ``jobs.wakeups`` publishes the ids of changed jobs after each commit; it wakes the watches of
   those ids (and every watch after a (re)connect, since messages may have been missed);
2. **the re-check** — every ``API_LIVE_RECHECK_S`` (every ``API_SSE_POLL_S`` while there is no
   subscriber) one query reads the live state (``jobs.selectors.jobs_live_state``) of every
   watched job and wakes each watch whose job differs from what its request last read. A lost
   wake-up therefore costs a waiter one period, and the database stays the truth.

A woken request re-reads its job; nothing is taken from the message. Database reads of waiting
requests run through :func:`run_db`: on a small executor of their own under ASGI (each thread
keeps or borrows one connection), or in the request's thread when the view is called
synchronously (WSGI, Django's test client), exactly where Django runs synchronous code then.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from jobs.selectors import jobs_live_state
from jobs.wakeups import decode_ids, wakeup_channel

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# Set for a request served synchronously (WSGI, the test client): its database work stays in
# its own thread, which holds its connection (and, in tests, its transaction).
_in_request_thread: contextvars.ContextVar[bool] = contextvars.ContextVar("live_in_request_thread", default=False)

_executor_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def serve_in_request_thread(value: bool) -> None:
    _in_request_thread.set(value)


def _db_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=settings.API_LIVE_DB_THREADS, thread_name_prefix="live-db")
        return _executor


def _db_call(fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
    # As Django does around a request: drop a broken or expired connection before, and give a
    # pooled one back after.
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()


async def run_db(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``fn`` (database work) off the event loop; see the module docstring for where."""
    if _in_request_thread.get():
        return await sync_to_async(fn)(*args, **kwargs)
    call = sync_to_async(_db_call, thread_sensitive=False, executor=_db_executor())
    return await call(fn, args, kwargs)


class Watch:
    """One waiter on one job. ``seen`` is the live state its request last read (None: not yet)."""

    __slots__ = ("_event", "job_id", "seen")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.seen: tuple[Any, ...] | None = None
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    def clear(self) -> None:
        """Call before re-reading the job, so a wake-up during the read is not lost."""
        self._event.clear()

    async def wait(self, timeout: float) -> bool:
        """Wait until woken (True) or ``timeout`` seconds pass (False)."""
        if timeout <= 0:
            return self._event.is_set()
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        return True


class WakeupHub:
    """The watches of one event loop (one per web process), its subscriber and its re-check."""

    def __init__(self) -> None:
        self._watches: dict[str, set[Watch]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.subscribed = False

    @property
    def watch_count(self) -> int:
        return sum(len(ws) for ws in self._watches.values())

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[Watch]:
        self._ensure_running()
        item = Watch(job_id)
        self._watches.setdefault(job_id, set()).add(item)
        try:
            yield item
        finally:
            watches = self._watches.get(job_id)
            if watches is not None:
                watches.discard(item)
                if not watches:
                    del self._watches[job_id]

    def wake(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            for item in self._watches.get(job_id, ()):
                item.wake()

    def wake_all(self) -> None:
        for watches in self._watches.values():
            for item in watches:
                item.wake()

    async def aclose(self) -> None:
        """Stop the subscriber and the re-check (a process normally keeps them until it exits)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def _ensure_running(self) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]
        if self._tasks:
            return
        # A context of their own: the tasks outlive the request that happened to start them.
        context = contextvars.Context()
        context.run(_in_request_thread.set, _in_request_thread.get())
        self._tasks.append(asyncio.create_task(self._recheck(), name="jobs-live-recheck", context=context))
        if settings.JOBS_WAKEUP_URL:
            self._tasks.append(asyncio.create_task(self._subscribe(), name="jobs-live-subscriber", context=context))

    async def _subscribe(self) -> None:
        backoff = 0.5
        while True:
            url = settings.JOBS_WAKEUP_URL
            # TCP keepalive is a TCP option: redis-py refuses it on a unix socket (the embedded broker).
            keepalive = {} if url.startswith("unix://") else {"socket_keepalive": True}
            client = aioredis.Redis.from_url(url, socket_connect_timeout=2.0, health_check_interval=30, **keepalive)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            cancelled = False
            try:
                await pubsub.subscribe(wakeup_channel())
                self.subscribed = True
                backoff = 0.5
                # Anything may have changed while nobody listened.
                self.wake_all()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.wake(decode_ids(message["data"]))
            except asyncio.CancelledError:
                cancelled = True
                raise
            except Exception:  # Redis gone: the re-check carries on until it is back
                logger.warning("wake-up subscriber lost Redis; re-checking every %ss", settings.API_SSE_POLL_S,
                               exc_info=True)
            finally:
                self.subscribed = False
                # A loop being shut down cancels this task: it must not wait on a close that may
                # never finish (the connection goes with the loop). Otherwise close, bounded.
                if not cancelled:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(pubsub.aclose(), 1.0)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(client.aclose(), 1.0)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _recheck(self) -> None:
        while True:
            period = settings.API_LIVE_RECHECK_S if self.subscribed else settings.API_SSE_POLL_S
            await asyncio.sleep(period)
            watched = [item for watches in self._watches.values() for item in watches if item.seen is not None]
            if not watched:
                continue
            try:
                current = await run_db(jobs_live_state, job_ids=sorted({item.job_id for item in watched}))
            except Exception:  # the database is down; try again next period
                logger.warning("live re-check failed", exc_info=True)
                continue
            for item in watched:
                if current.get(item.job_id) != item.seen:
                    item.wake()


_hub: WakeupHub | None = None
_hub_loop: asyncio.AbstractEventLoop | None = None


def hub() -> WakeupHub:
    """The hub of the running event loop (one per web process under ASGI; a WSGI request that
    runs an async view gets a short-lived loop, and a hub with it)."""
    global _hub, _hub_loop
    loop = asyncio.get_running_loop()
    if _hub is None or _hub_loop is not loop:
        _hub, _hub_loop = WakeupHub(), loop
    return _hub
