"""Start, watch and stop the platform's processes (``manage.py runplatform``).

Each child runs in a session of its own, so a Ctrl-C in the terminal reaches only the
supervisor, which then stops the children in order: SIGTERM to each child's main process (a
Celery worker finishes its running tasks, gunicorn its requests), a bounded wait, then SIGKILL
to the child's whole process group — prefork pool processes and gunicorn workers included — so
nothing outlives the supervisor. On Linux each child also gets SIGTERM if the supervisor itself
dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

PR_SET_PDEATHSIG = 1


def secret_persisted(*, path: Path, make: Callable[[], str]) -> str:
    """The secret stored at ``path``, created with ``make()`` on first use (mode 0600).

    Stable across restarts: a new random secret key on every start would log everyone out and
    make encrypted secret inputs of queued jobs unreadable.
    """
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if value:
        return value
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    os.replace(tmp, path)
    return value


def token_random(length: int = 32) -> str:
    """Random letters and digits: no leading ``-`` or other character a shell or a
    ``user:password`` pair would trip over."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


# Exchanges whose bindings belong to one process's lifetime: Flower's event queues
# (``celeryev.<uuid>``), remote-control mailboxes and their reply queues.
TRANSIENT_EXCHANGES = ("celeryev", "celery.pidbox", "reply.celery.pidbox")


def filesystem_broker_prune(*, queue_dir: Path, control_dir: Path) -> int:
    """Forget event and remote-control queues left by processes that are gone; return the
    number of message files removed.

    kombu's filesystem transport ignores ``auto_delete`` (kombu/transport/virtual/base.py,
    ``basic_cancel`` removes no binding), so a stopped Flower stays bound to the ``celeryev``
    exchange and the worker keeps writing an event file for it every heartbeat, forever; every
    poll then lists a growing folder. Called only while no platform process runs (under the
    supervisor's lock): live processes declare their bindings again when they start. Job
    messages (queues intake/execute/finalize/control) are never touched.
    """
    for exchange in TRANSIENT_EXCHANGES:
        (control_dir / f"{exchange}.exchange").unlink(missing_ok=True)
    removed = 0
    if not queue_dir.is_dir():
        return 0
    for entry in os.scandir(queue_dir):
        # Message files are named ``<ms>_<uuid>.<queue>.msg``.
        queue = entry.name.partition(".")[2].removesuffix(".msg")
        if queue.startswith("celeryev.") or queue.endswith(".celery.pidbox"):
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def _child_setup() -> None:  # pragma: no cover - runs in the forked child
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # Start only once this returns True (polled), or after ``START_WAIT_S`` regardless.
    start_when: Callable[[], bool] | None = None


START_WAIT_S = 30.0


@dataclass
class Child:
    spec: ChildSpec
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def group_alive(self) -> bool:
        """Whether any process of this child's process group is still there."""
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def http_answers(url: str, *, timeout: float = 1.0) -> bool:
    """True when something answers HTTP at ``url`` (any status code counts)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


class Supervisor:
    """Runs children until a stop signal or until one of them exits on its own.

    Steps of :meth:`run`:
    1. Install SIGINT/SIGTERM/SIGHUP handlers that only set a flag.
    2. Start every child (own session, inherited stdout/stderr); one with ``start_when`` waits
       until that holds (Flower waits for the worker, so its first inspection finds it).
    3. Poll: a child that exited means failure; once every ``ready_urls`` answered (web, Flower),
       call ``on_ready``.
    4. Stop all children (SIGTERM, wait ``stop_timeout``, SIGKILL the process groups).
    5. Return 0 after a requested stop, 1 after an unexpected exit.
    """

    def __init__(
        self,
        *,
        specs: list[ChildSpec],
        cwd: Path,
        base_env: dict[str, str],
        ready_urls: list[str],
        on_ready: Callable[[float], None],
        out: TextIO,
        stop_timeout: float = 20.0,
    ) -> None:
        self.specs = specs
        self.cwd = cwd
        self.base_env = base_env
        self.ready_urls = ready_urls
        self.on_ready = on_ready
        self.out = out
        self.stop_timeout = stop_timeout
        self.children: list[Child] = []
        self._stop_signal: int | None = None

    def say(self, message: str) -> None:
        self.out.write(f"platform: {message}\n")
        self.out.flush()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum

    def start(self, spec: ChildSpec) -> None:
        env = {**self.base_env, **spec.env}
        # preexec_fn is unsafe only with threads; the supervisor starts none.
        popen = subprocess.Popen(
            spec.argv, cwd=self.cwd, env=env, start_new_session=True,
            preexec_fn=_child_setup,  # noqa: PLW1509
        )
        self.children.append(Child(spec, popen))
        self.say(f"started {spec.name} pid {popen.pid}")

    def run(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        started = time.monotonic()
        exit_code = 0
        try:
            deferred = [spec for spec in self.specs if spec.start_when is not None]
            for spec in self.specs:
                if spec.start_when is None:
                    self.start(spec)
            waiting = list(self.ready_urls)
            ready = False
            next_probe = 0.0
            while self._stop_signal is None:
                dead = next((c for c in self.children if c.popen.poll() is not None), None)
                if dead is not None:
                    self.say(f"{dead.spec.name} (pid {dead.pid}) exited with code "
                             f"{dead.popen.returncode}; stopping the others")
                    exit_code = 1
                    break
                now = time.monotonic()
                if not ready and now >= next_probe:
                    next_probe = now + 0.3
                    for spec in list(deferred):
                        if now - started > START_WAIT_S or (spec.start_when and spec.start_when()):
                            deferred.remove(spec)
                            self.start(spec)
                    waiting = [url for url in waiting if not http_answers(url)]
                    if not waiting and not deferred:
                        ready = True
                        self.on_ready(time.monotonic() - started)
                time.sleep(0.1)
            if self._stop_signal is not None:
                self.say(f"received {signal.Signals(self._stop_signal).name}; stopping")
        finally:
            self.stop_all()
        return exit_code

    def stop_all(self) -> None:
        """SIGTERM every main process, wait, then SIGKILL what is left of every process group."""
        for child in self.children:
            if child.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for child in self.children:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                child.popen.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                self.say(f"{child.spec.name} (pid {child.pid}) did not stop in {self.stop_timeout:.0f}s; killing")
        # Pool processes and gunicorn workers normally leave with their parent; give them a
        # moment, then kill whatever is left of each group.
        grace = time.monotonic() + 3.0
        while any(c.group_alive() for c in self.children) and time.monotonic() < grace:
            time.sleep(0.1)
        for child in self.children:
            if child.group_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
            try:
                child.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.say(f"{child.spec.name} (pid {child.pid}) survived SIGKILL")
        self.say("all processes stopped")
