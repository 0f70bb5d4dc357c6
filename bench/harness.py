"""The benchmark harness: the context a scenario runs in, its result rows, and real processes.

A scenario is a module in ``bench/scenarios/`` with ``run(ctx: Ctx) -> list[Row]``. Before it
runs, the runner (``bench/__main__.py``) has configured Django, migrated the bench database,
ensured the bench principal and purged the bench's tables and broker queues. Inside ``run`` a
scenario starts what it needs through the context::

    def run(ctx: Ctx) -> list[Row]:
        with ctx.bare_worker():
            ...                      # publish bench.bare_app tasks, measure
        with ctx.governed_worker(), ctx.beat():
            ...                      # submit jobs through jobs.services.submit, measure
        return [Row("throughput (jobs/s)", governed=..., bare=..., target="ratio >= 0.5", met=...)]

Every process the harness starts is a real OS process in its own session, stopped by its PID
(SIGTERM, then SIGKILL of its own process group after a grace period) when its ``with`` block
ends, and again by the runner after each scenario, so a failing scenario never leaves a worker
behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis
    from celery import Celery

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/jobplatform_bench"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/3"
BENCH_USERNAME = "bench"
BENCH_GRANTS = ["demo:*"]
# The platform's stage and housekeeping queues, and the bare app's queue.
GOVERNED_QUEUES = ("intake", "execute", "finalize", "control")
BARE_QUEUE = "bench_bare"
# Every key the bench writes for its own measurements starts with this.
KEY_PREFIX = "bench:"

# Celery settings that must be the same for the bare app and the platform, or the comparison
# compares configurations instead of the platform's overhead. Checked before every run.
MIRRORED_SETTINGS = (
    "task_acks_late",
    "task_reject_on_worker_lost",
    "worker_prefetch_multiplier",
    "task_serializer",
    "accept_content",
    "task_ignore_result",
    "worker_send_task_events",
    "task_send_sent_event",
    "broker_transport_options",
    "task_publish_retry",
    "task_publish_retry_policy",
)


@dataclass
class Row:
    """One line of the result table: a metric measured on the platform and on bare Celery.

    ``governed``/``bare`` are numbers in ``unit`` (either may be None when a side has no such
    figure); ``ratio`` is governed/bare. ``target`` is a human-readable goal and ``met`` whether
    it was reached (None: no target). ``scenario`` is filled in by the runner.
    """

    metric: str
    governed: float | None
    bare: float | None
    unit: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""
    scenario: str = ""

    @property
    def ratio(self) -> float | None:
        if self.governed is None or self.bare is None or self.bare == 0:
            return None
        return self.governed / self.bare

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


# --- processes ------------------------------------------------------------------------------

_LIVE: dict[int, ManagedProcess] = {}


class ManagedProcess:
    """A child process in its own session, logging to a file, stopped by its PID."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path, env: dict[str, str] | None = None,
                 stop_grace_s: float = 15.0) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.stop_grace_s = stop_grace_s
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            # A new session makes the child a process-group leader: SIGKILL of that group
            # reaches the pool children it forked, and nothing else.
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env or dict(os.environ), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        _LIVE[self.proc.pid] = self
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (Celery's warm shutdown), then SIGKILL of the process group after the grace."""
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_grace_s)
                except subprocess.TimeoutExpired:
                    pass
            # The pool children live in the group even when the parent is gone.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        finally:
            _LIVE.pop(proc.pid, None)


def stop_all() -> None:
    """Stop every process the harness started and has not stopped yet."""
    for proc in list(_LIVE.values()):
        proc.stop()


atexit.register(stop_all)


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passed; return its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


# --- context --------------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a scenario gets. ``jobs``/``duration_s`` are None unless given on the command line;
    a scenario picks its own defaults (smaller with ``quick``)."""

    scenario: str
    jobs: int | None
    rate: float
    duration_s: float | None
    quick: bool
    concurrency: int
    options: dict[str, str]
    database_url: str
    broker_url: str
    run_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, written to the JSON

    # -- helpers --------------------------------------------------------------------------
    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {self.scenario}: {message}", file=sys.stderr, flush=True)

    def n_jobs(self, default: int, quick: int) -> int:
        return self.jobs if self.jobs is not None else (quick if self.quick else default)

    def seconds(self, default: float, quick: float) -> float:
        return self.duration_s if self.duration_s is not None else (quick if self.quick else default)

    def redis(self) -> redis.Redis:
        import redis as redis_lib

        return redis_lib.Redis.from_url(self.broker_url)

    @property
    def principal(self) -> Any:
        """The bench principal (a user holding ``demo:*``)."""
        from django.contrib.auth import get_user_model

        return get_user_model().objects.get(username=BENCH_USERNAME)

    def profiled(self, name: str, pid: int | None, *,
                 children: bool = True) -> contextlib.AbstractContextManager[Any]:
        """With ``-o profile=1``: sample ``pid`` and its children with py-spy inside the block, and
        keep the summary in ``extra["profile"][name]`` (``bench/profile.py``); else do nothing."""
        if not self.options.get("profile") or pid is None:
            return contextlib.nullcontext()
        from bench.profile import Spy, format_summary, summarize

        output = self.run_dir / f"{name}.pyspy.txt"

        @contextlib.contextmanager
        def spy() -> Iterator[None]:
            with Spy(pid, output, children=children):
                yield
            summary = summarize(output)
            self.extra.setdefault("profile", {})[name] = summary
            self.log("\n" + format_summary(name, summary))

        return spy()

    def purge(self) -> None:
        """Empty the bench's job tables and its broker queues (see :func:`purge_database`)."""
        purge_database()
        purge_broker(self.redis(), queues=(*GOVERNED_QUEUES, BARE_QUEUE))

    # -- processes ------------------------------------------------------------------------
    def _process(self, name: str, argv: list[str], *, ready: Callable[[ManagedProcess], bool] | None,
                 env: Mapping[str, str] | None = None,
                 ready_timeout_s: float = 90.0) -> contextlib.AbstractContextManager[ManagedProcess]:
        @contextlib.contextmanager
        def manage() -> Iterator[ManagedProcess]:
            proc = ManagedProcess(name, argv, log_path=self.run_dir / f"{name}.log",
                                  env={**os.environ, **(env or {})})
            try:
                proc.start()
                self.log(f"started {name} (pid {proc.pid})")
                if ready is not None and not wait_until(
                    lambda: not proc.alive() or ready(proc), timeout_s=ready_timeout_s, interval_s=0.2
                ):
                    raise RuntimeError(f"{name} not ready after {ready_timeout_s:.0f}s:\n{proc.log_tail()}")
                if not proc.alive():
                    raise RuntimeError(f"{name} exited during start:\n{proc.log_tail()}")
                yield proc
            finally:
                proc.stop()
                self.log(f"stopped {name} (pid {proc.pid})")

        return manage()

    def _worker(
        self, *, kind: str, app_module: str, app: Celery, queues: Sequence[str], concurrency: int | None,
        extra_args: Sequence[str], env: Mapping[str, str] | None,
    ) -> contextlib.AbstractContextManager[ManagedProcess]:
        hostname = f"bench-{kind}-{os.getpid()}-{int(time.time() * 1000) % 100000}@{socket.gethostname()}"
        argv = [
            sys.executable, "-m", "celery", "-A", app_module, "worker",
            "-Q", ",".join(queues), "-P", "prefork", "-c", str(concurrency or self.concurrency),
            "-n", hostname, "-l", "WARNING", *extra_args,
        ]

        def ready(_: ManagedProcess) -> bool:
            return bool(app.control.ping(destination=[hostname], timeout=0.5))

        return self._process(f"worker-{kind}", argv, ready=ready, env=env)

    def governed_worker(
        self, *, queues: Sequence[str] = GOVERNED_QUEUES, concurrency: int | None = None,
        extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
    ) -> contextlib.AbstractContextManager[ManagedProcess]:
        """A platform worker (``celery -A config worker``) on the stage and control queues.

        ``env`` adds environment variables for this process only (e.g. ``{"JOBS_LEASE_S": "10"}``).
        """
        from config.celery import app

        return self._worker(kind="governed", app_module="config", app=app, queues=queues,
                            concurrency=concurrency, extra_args=extra_args, env=env)

    def bare_worker(
        self, *, concurrency: int | None = None, extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> contextlib.AbstractContextManager[ManagedProcess]:
        """A worker of the minimal bare Celery app (``bench.bare_app``)."""
        from bench.bare_app import app

        return self._worker(kind="bare", app_module="bench.bare_app", app=app, queues=(BARE_QUEUE,),
                            concurrency=concurrency, extra_args=extra_args, env=env)

    def web_server(
        self, *, workers: int = 2, env: Mapping[str, str] | None = None,
    ) -> contextlib.AbstractContextManager[ManagedProcess]:
        """The platform's web tier as ``runplatform`` runs it (uvicorn, ``config.asgi``) on a
        spare loopback port; ``proc.url`` is its base URL. Ready once the API answers (401)."""
        import urllib.error
        import urllib.request

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port",
                str(port), "--workers", str(workers), "--lifespan", "off", "--no-access-log",
                "--log-level", "warning", "--timeout-graceful-shutdown", "3"]

        def ready(proc: ManagedProcess) -> bool:
            proc.url = url  # type: ignore[attr-defined]
            try:
                urllib.request.urlopen(f"{url}/api/v1/me", timeout=1)
            except urllib.error.HTTPError:
                return True
            except OSError:
                return False
            return True

        return self._process("web", argv, ready=ready, env=env)

    def beat(self, *, env: Mapping[str, str] | None = None) -> contextlib.AbstractContextManager[ManagedProcess]:
        """The platform's beat scheduler (dispatch tick, lease reaper, …), as deployed."""
        argv = [sys.executable, "-m", "celery", "-A", "config", "beat", "-l", "WARNING"]
        return self._process("beat", argv, ready=None, env=env)


# --- setup and purge ------------------------------------------------------------------------


def configure_environment() -> None:
    """Environment defaults for the bench process and every process it starts."""
    os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    os.environ.setdefault("CELERY_BROKER_URL", DEFAULT_BROKER_URL)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # Per-task INFO lines would be measured as overhead on both sides; keep logs to warnings.
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # WhiteNoise warns on the first in-process request when collectstatic never ran; the
    # benchmark serves no static files.
    warnings.filterwarnings("ignore", message="No directory at", category=UserWarning)


def django_setup() -> None:
    import django
    from django.conf import settings

    django.setup()
    engine = settings.DATABASES["default"]["ENGINE"]
    name = str(settings.DATABASES["default"].get("NAME") or "")
    if engine != "django.db.backends.postgresql":
        raise SystemExit(f"the benchmark runs on PostgreSQL; DATABASE_URL points at {engine}")
    # The harness truncates job tables before each scenario: never do that to a real database.
    if "bench" not in name:
        raise SystemExit(f"refusing to run on database {name!r}: its name must contain 'bench'")
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        raise SystemExit(f"the benchmark runs on Redis; CELERY_BROKER_URL is {settings.CELERY_BROKER_URL!r}")


def check_mirrored_settings() -> list[str]:
    """Names of reliability settings where the bare app differs from the platform."""
    from bench.bare_app import app as bare
    from config.celery import app as platform

    return [key for key in MIRRORED_SETTINGS if bare.conf.get(key) != platform.conf.get(key)]


def ensure_database() -> None:
    """Create the bench database if it does not exist yet (through the maintenance database)."""
    from django.db import connection

    name = str(connection.settings_dict["NAME"])
    # Django's own test runner creates databases through this no-database cursor.
    with connection._nodb_cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cursor.fetchone() is None:
            cursor.execute(f"CREATE DATABASE {connection.ops.quote_name(name)}")


@contextlib.contextmanager
def exclusive_run(*, wait_s: float) -> Iterator[None]:
    """Hold PostgreSQL advisory locks on the bench database's name and the broker URL for the run.

    Two runs sharing a database or a broker would purge each other's tables or queues and
    consume each other's messages. The locks are taken in the server's maintenance database
    (advisory locks are per database, and the bench database may differ between runs that
    share a broker), on a connection of their own (Django may recycle its connections), and go
    away when that connection closes, also if this process dies. A second run waits up to
    ``wait_s`` seconds, then gives up.
    """
    import zlib

    import psycopg
    from django.conf import settings
    from django.db import connection

    db = connection.settings_dict
    names = (f"bench-db:{db['NAME']}", f"bench-broker:{settings.CELERY_BROKER_URL}")
    keys = [zlib.crc32(name.encode()) for name in names]
    conn = psycopg.connect(
        dbname="postgres", user=db.get("USER") or None, password=db.get("PASSWORD") or None,
        host=db.get("HOST") or None, port=db.get("PORT") or None, autocommit=True,
        application_name=f"bench pid={os.getpid()}",
    )
    try:
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            row = conn.execute("SELECT pg_try_advisory_lock(%s) AND pg_try_advisory_lock(%s)", keys).fetchone()
            if row and row[0]:
                break
            conn.execute("SELECT pg_advisory_unlock_all()")
            holder = conn.execute(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = ANY(%s) AND a.pid <> pg_backend_pid() "
                "LIMIT 1", [keys],
            ).fetchone()
            who = holder[0] if holder else "?"
            if time.monotonic() >= deadline:
                raise SystemExit(f"another benchmark run uses this database or broker ({who}); "
                                 f"gave up after {wait_s:.0f}s")
            if not told:
                print(f"waiting for another benchmark run on this database or broker ({who})...",
                      file=sys.stderr, flush=True)
                told = True
            time.sleep(2.0)
        yield
    finally:
        conn.close()


def prepare_database() -> None:
    """Migrate the bench database and ensure the bench principal."""
    from django.core.management import call_command

    from governance.services import principal_ensure

    call_command("migrate", verbosity=0, interactive=False)
    principal_ensure(username=BENCH_USERNAME, grants=BENCH_GRANTS)


def purge_database() -> None:
    """Truncate every table of the jobs, audit and approvals apps, and the policy rules.

    TRUNCATE is not a row-level DELETE, so the audit table's append-only trigger does not fire;
    this is why the harness only runs on a database whose name contains "bench". Principals
    and grants are kept.
    """
    from django.apps import apps
    from django.db import connection

    tables = [m._meta.db_table for label in ("jobs", "audit", "approvals")
              for m in apps.get_app_config(label).get_models()]
    with contextlib.suppress(LookupError):
        tables.append(apps.get_model("governance", "PolicyRule")._meta.db_table)
    quoted = ", ".join(connection.ops.quote_name(t) for t in tables)
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {quoted} RESTART IDENTITY CASCADE")
    # TRUNCATE sends no signals: tell the governance caches the rules changed.
    from governance.cache import governance_bump

    governance_bump()


def purge_broker(client: redis.Redis, *, queues: Sequence[str]) -> int:
    """Delete the given queues (with kombu's priority sub-queues), the unacked set and bench keys.

    Only this broker database is touched (never FLUSHDB: the URL may be shared by mistake).
    """
    keys: set[bytes | str] = {"unacked", "unacked_index", "unacked_mutex"}
    for queue in queues:
        keys.add(queue)
        # kombu's Redis transport keeps priorities in sibling lists "<queue>\x06\x16<n>".
        keys.update(client.scan_iter(match=f"{queue}\x06\x16*", count=1000))
    keys.update(client.scan_iter(match=f"{KEY_PREFIX}*", count=1000))
    return int(client.delete(*keys)) if keys else 0


# --- CPU accounting -------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (process group, CPU seconds user+system) for every process /proc shows."""
    out: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                raw = fh.read()
        except OSError:
            continue
        # Fields after the command name, which may itself contain spaces and parentheses.
        fields = raw.rsplit(")", 1)[1].split()
        out[int(entry)] = (int(fields[2]), (int(fields[11]) + int(fields[12])) / _CLK_TCK)
    return out


class CpuMeter:
    """CPU seconds spent by one side of a measurement, split by part.

    Wall-clock rates on a shared machine depend on what else runs; CPU time per job much less.
    Parts: each given process (with its pool children: every process of its process group),
    this process (the submitting thread and its helpers), and the PostgreSQL backends serving
    the bench database (when the server runs on this machine). A backend that exits inside
    the window is not counted; Redis is left out (a server shared with other databases).
    """

    def __init__(self, processes: Mapping[str, ManagedProcess], *, database: bool = True) -> None:
        self.processes = dict(processes)
        self.database = database
        self._start: dict[int, tuple[int, float]] = {}
        self._self_start = 0.0

    def _backend_pids(self) -> tuple[int | None, set[int]]:
        """(this process's backend, every backend of the bench database)."""
        if not self.database:
            return None, set()
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            own = cursor.fetchone()
            cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            return (int(own[0]) if own else None), {int(row[0]) for row in cursor.fetchall()}

    def start(self) -> CpuMeter:
        self._own_backend, self._backends = self._backend_pids()
        self._start = _proc_table()
        self._self_start = time.process_time()
        return self

    def stop(self) -> dict[str, float]:
        """CPU seconds by part since :meth:`start`: ``bench process``, ``bench backend`` (its
        PostgreSQL backend), one entry per process given, ``other backends``, and ``total``."""
        self_s = time.process_time() - self._self_start
        end = _proc_table()
        own, backends = self._backend_pids()
        backends |= self._backends

        def used(pid: int) -> float:
            return end[pid][1] - self._start.get(pid, (0, 0.0))[1] if pid in end else 0.0

        parts: dict[str, float] = {"bench process": self_s}
        if self.database:
            parts["bench backend"] = used(own) if own is not None and own == self._own_backend else 0.0
        for name, proc in self.processes.items():
            parts[name] = sum(used(pid) for pid, (pgrp, _) in end.items() if pgrp == proc.pid)
        if self.database:
            parts["other backends"] = sum(used(pid) for pid in backends if pid != own)
        parts["total"] = sum(parts.values())
        return {k: round(v, 3) for k, v in parts.items()}


def db_sessions_total() -> int | None:
    """Connections ever opened to the bench database (``pg_stat_database.sessions``, PG 14+)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None else None


# --- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Linear-interpolated percentile (0–100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * pct / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def paced(count: int, rate: float, *, max_s: float) -> Iterator[tuple[int, float]]:
    """Yield ``(i, scheduled_time)`` ``count`` times at ``rate`` per second (open loop).

    A caller that falls behind is not made to burst: each item waits for its own slot, or goes
    at once if its slot has passed. Stops early after ``max_s`` seconds.
    """
    start = time.monotonic()
    for i in range(count):
        slot = start + i / rate
        now = time.monotonic()
        if now - start > max_s:
            return
        if slot > now:
            time.sleep(slot - now)
        yield i, slot
