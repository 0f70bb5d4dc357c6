"""Start, watch, restart and stop the platform's processes (``manage.py runplatform``).

A child that exits on its own is started again after a backoff (like systemd's
``Restart=on-failure``); only a child that keeps exiting stops the platform (``RestartPolicy``).

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
from collections import deque
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


def _child_setup() -> None:  # pragma: no cover - runs in the forked child
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass



@dataclass
class ChildSpec:
    """One long-running process of the platform. Nothing here knows what the process is: the
    web server, a worker, the broker are all an argv, an environment and optional probes."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # Variables removed from the environment this child inherits.
    unset_env: tuple[str, ...] = ()
    # Start only once this returns True (polled), or after ``START_WAIT_S`` regardless.
    start_when: Callable[[], bool] | None = None
    # A foundation child (the embedded broker) is started before every other child, which are
    # started only once ``ready`` returns True; it is stopped after all of them.
    foundation: bool = False
    ready: Callable[[], bool] | None = None


START_WAIT_S = 30.0
FOUNDATION_WAIT_S = 30.0


@dataclass(frozen=True)
class RestartPolicy:
    """When a child that exited on its own is started again, and when the platform gives up.

    Like systemd's ``Restart=on-failure`` with ``StartLimitBurst``/``StartLimitIntervalSec``: the
    n-th exit within ``interval_s`` waits ``min(backoff_initial_s * 2**(n-1), backoff_max_s)``
    before the restart; the ``burst``-th exit within ``interval_s`` stops the platform. Every
    child is a server meant to run until it is told to stop, so any exit counts, code 0 included.
    """

    burst: int = 5
    interval_s: float = 60.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0

    def backoff(self, recent_exits: int) -> float:
        return float(min(self.backoff_initial_s * 2 ** max(0, recent_exits - 1), self.backoff_max_s))


def exit_reason(returncode: int) -> str:
    """``exited with code 1`` or ``was killed by SIGKILL`` (Popen reports a signal as -N)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


@dataclass
class Child:
    spec: ChildSpec
    popen: subprocess.Popen[bytes] | None = None
    # Process groups of every process started for this child (one per start), for the final sweep.
    groups: list[int] = field(default_factory=list)
    exits: deque[float] = field(default_factory=deque)
    restart_at: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen is not None else 0

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


def group_alive(group: int) -> bool:
    """Whether any process of the process group ``group`` is still there."""
    try:
        os.killpg(group, 0)
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
    """Runs children until a stop signal, restarting any child that exits on its own.

    Steps of :meth:`run`:
    1. Install SIGINT/SIGTERM/SIGHUP handlers that only set a flag.
    2. Start the foundation children (the embedded broker) and wait until each is ``ready``.
    3. Start every other child (own session, inherited stdout/stderr); one with ``start_when``
       waits until that holds (Flower waits for the worker, so its first inspection finds it).
    4. Poll. A child that exited is logged with its exit code or signal, what is left of its
       process group is killed, and it is started again after a backoff (``RestartPolicy``);
       if it exited ``burst`` times within ``interval_s``, the platform stops and says so. Once
       every ``ready_urls`` answered (web, Flower), call ``on_ready`` (once).
    5. Stop: the other children first (SIGTERM, wait ``stop_timeout``, SIGKILL the process
       groups), the foundation children last, so workers can still hand back their messages.
    6. Return 0 after a requested stop, 1 when a child kept failing.
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
        restart: RestartPolicy | None = None,
    ) -> None:
        self.specs = specs
        self.cwd = cwd
        self.base_env = base_env
        self.ready_urls = ready_urls
        self.on_ready = on_ready
        self.out = out
        self.stop_timeout = stop_timeout
        self.restart = restart or RestartPolicy()
        self.children: list[Child] = []
        self._stop_signal: int | None = None

    def say(self, message: str) -> None:
        self.out.write(f"platform: {message}\n")
        self.out.flush()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum

    def start(self, spec: ChildSpec) -> Child:
        child = Child(spec)
        self.children.append(child)
        self._spawn(child)
        return child

    def _spawn(self, child: Child) -> None:
        env = {k: v for k, v in {**self.base_env, **child.spec.env}.items() if k not in child.spec.unset_env}
        # preexec_fn is unsafe only with threads; the supervisor starts none.
        popen = subprocess.Popen(
            child.spec.argv, cwd=self.cwd, env=env, start_new_session=True,
            preexec_fn=_child_setup,  # noqa: PLW1509
        )
        child.popen = popen
        child.restart_at = None
        child.groups.append(popen.pid)
        again = f" (restart after {len(child.exits)} exit(s) in the last {self.restart.interval_s:.0f}s)" \
            if child.exits else ""
        self.say(f"started {child.spec.name} pid {popen.pid}{again}")

    def _wait_foundation(self, child: Child) -> bool:
        """Wait until a foundation child is ready; False if it died, timed out or a stop came."""
        deadline = time.monotonic() + FOUNDATION_WAIT_S
        while self._stop_signal is None:
            if not child.running():
                code = child.popen.returncode if child.popen is not None else -1
                self.say(f"{child.spec.name} (pid {child.pid}) {exit_reason(code)} before it was ready")
                return False
            if child.spec.ready is None or child.spec.ready():
                return True
            if time.monotonic() > deadline:
                self.say(f"{child.spec.name} (pid {child.pid}) not ready after {FOUNDATION_WAIT_S:.0f}s")
                return False
            time.sleep(0.05)
        return False

    def _handle_exit(self, child: Child, now: float) -> bool:
        """Log an exited child and schedule its restart; False when it exited too often."""
        assert child.popen is not None
        reason = exit_reason(child.popen.returncode)
        pid = child.pid
        # Pool processes or gunicorn workers may outlive their parent: the next start must not
        # share the broker or the port with them.
        if group_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        child.popen = None
        window = self.restart.interval_s
        child.exits.append(now)
        while child.exits and now - child.exits[0] > window:
            child.exits.popleft()
        count = len(child.exits)
        if count >= self.restart.burst:
            self.say(f"{child.spec.name} (pid {pid}) {reason}; it exited {count} times in {window:.0f}s "
                     f"(limit {self.restart.burst}): giving up, stopping the platform")
            return False
        delay = self.restart.backoff(count)
        child.restart_at = now + delay
        self.say(f"{child.spec.name} (pid {pid}) {reason}; restarting in {delay:.1f}s "
                 f"(exit {count} of {self.restart.burst} allowed in {window:.0f}s)")
        return True

    def run(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        started = time.monotonic()
        exit_code = 0
        try:
            for spec in self.specs:
                if spec.foundation and not self._wait_foundation(self.start(spec)):
                    if self._stop_signal is None:
                        exit_code = 1
                    break
            else:
                exit_code = self._loop(started)
            if self._stop_signal is not None:
                self.say(f"received {signal.Signals(self._stop_signal).name}; stopping")
        finally:
            self.stop_all()
        return exit_code

    def _loop(self, started: float) -> int:
        deferred = [spec for spec in self.specs if spec.start_when is not None and not spec.foundation]
        for spec in self.specs:
            if spec.start_when is None and not spec.foundation:
                self.start(spec)
        waiting = list(self.ready_urls)
        ready = False
        next_probe = 0.0
        while self._stop_signal is None:
            now = time.monotonic()
            for child in self.children:
                if child.popen is not None and child.popen.poll() is not None:
                    if not self._handle_exit(child, now):
                        return 1
                elif child.popen is None and child.restart_at is not None and now >= child.restart_at:
                    self._spawn(child)
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
        return 0

    def stop_all(self) -> None:
        """Stop the other children, then the foundation children (see :meth:`_stop`)."""
        self._stop([c for c in self.children if not c.spec.foundation])
        self._stop([c for c in self.children if c.spec.foundation])
        self.say("all processes stopped")

    def _stop(self, children: list[Child]) -> None:
        """SIGTERM every main process, wait, then SIGKILL what is left of every process group."""
        for child in children:
            if child.running():
                assert child.popen is not None
                with contextlib.suppress(ProcessLookupError):
                    child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for child in children:
            if child.popen is None:
                continue
            remaining = max(0.0, deadline - time.monotonic())
            try:
                child.popen.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                self.say(f"{child.spec.name} (pid {child.pid}) did not stop in {self.stop_timeout:.0f}s; killing")
        # Pool processes and gunicorn workers normally leave with their parent; give them a
        # moment, then kill whatever is left of each group this child ever had.
        groups = [g for child in children for g in child.groups]
        grace = time.monotonic() + 3.0
        while any(group_alive(g) for g in groups) and time.monotonic() < grace:
            time.sleep(0.1)
        for group in groups:
            if group_alive(group):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, signal.SIGKILL)
        for child in children:
            if child.popen is None:
                continue
            try:
                child.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.say(f"{child.spec.name} (pid {child.pid}) survived SIGKILL")
