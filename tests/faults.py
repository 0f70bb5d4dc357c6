"""Fault injection for the failure-semantics tests: a cuttable TCP proxy and a private broker.

Nothing is mocked: the proxy forwards real bytes to the real PostgreSQL, and a "private broker"
is a real redis-server started by :func:`tests.harness.start_redis` that this test process
publishes to while the block runs (the shared broker is left alone).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests import harness
from tests.fault_types import WORKER_ENV


class TcpProxy:
    """Forward 127.0.0.1:<port> to a target; ``cut()`` drops every connection and refuses new
    ones (the target looks down), ``restore()`` listens again on the same port."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or harness.free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by cut()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave the
            # kernel socket listening while that thread holds it.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.start()


@contextlib.contextmanager
def publishing_to(broker_url: str) -> Iterator[None]:
    """Make this process's Celery app publish to ``broker_url`` while the block runs.

    The app's connection and producer pools are built lazily from ``broker_url``; dropping them
    makes the next publish connect to the new URL (what Celery itself does after a fork).
    """
    from config.celery import app as celery_app

    app: Any = celery_app  # its pool attributes are private; reset as Celery's _after_fork does

    def reset() -> None:
        from kombu import pools

        app._pool = None
        app.amqp._producer_pool = None
        # kombu keeps one pool per broker URL in module-level groups and would hand a closed
        # pool out again for the same URL ("Acquire on closed pool"); reset() closes them all
        # and clears the groups (kombu/pools.py ``reset``).
        with contextlib.suppress(Exception):
            pools.reset()

    # ``broker_url`` itself cannot be swapped: Celery's Settings.broker_url prefers the
    # CELERY_BROKER_URL environment variable (celery/app/utils.py), but the write URL is
    # consulted first for publishing.
    old = app.conf.get("broker_write_url")
    reset()
    app.conf.update(broker_write_url=broker_url)
    try:
        yield
    finally:
        reset()
        app.conf.update(broker_write_url=old)


@dataclass
class PrivateStack:
    """A private redis-server plus the workers and beat started against it."""

    redis: harness.RedisServer
    env: dict[str, str]
    procs: list[harness.Proc] = field(default_factory=list)

    def worker(self, name: str, concurrency: int = 2, **env: str) -> harness.Proc:
        proc = harness.start_worker(name=name, concurrency=concurrency, broker_url=self.redis.url,
                                    env={**self.env, **env})
        self.procs.append(proc)
        return proc

    def beat(self, **env: str) -> harness.Proc:
        proc = harness.start_beat(broker_url=self.redis.url, env={**self.env, **env})
        self.procs.append(proc)
        return proc

    def restart_redis(self) -> None:
        """Start redis-server again on the same port (it comes back empty: nothing on disk)."""
        self.redis = harness.start_redis(self.redis.port)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=5)
        self.redis.stop()


@contextlib.contextmanager
def private_stack(**env: str) -> Iterator[PrivateStack]:
    """A redis-server of its own, this process publishing to it, and cleanup of every process."""
    harness.SESSION.pause()  # the suite's shared stack reads the same test database
    stack = PrivateStack(redis=harness.start_redis(), env={**WORKER_ENV, **env})
    try:
        with publishing_to(stack.redis.url):
            yield stack
    finally:
        stack.stop()


def pool_children(proc: harness.Proc) -> list[int]:
    """PIDs of a worker's prefork pool processes (direct children of its main process)."""
    try:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []
