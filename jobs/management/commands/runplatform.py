"""Run the whole platform in the foreground: web, one worker for every queue, beat and Flower.

Steps:
1. Load (or create once, under PLATFORM_VAR_DIR/secrets) the secret key, the demo password
   and Flower's basic-auth credentials, unless the environment provides them.
2. migrate, collectstatic, and ensure the ``demo`` principal (grants, token, admin login).
3. Start gunicorn (gthread, so Server-Sent Event streams do not block other requests), a
   Celery worker consuming intake/execute/finalize/control, Celery beat (the database
   scheduler from settings) and Flower, and supervise them (common.supervisor).
4. Print the URLs and credentials and a ``platform ready`` line once the web server (and
   Flower) answer HTTP.

Ctrl-C or SIGTERM stops every child and exits 0; a child that dies on its own stops the rest
and exits 1.
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

from common.supervisor import ChildSpec, Supervisor, filesystem_broker_prune, secret_persisted, token_random
from governance.services import principal_ensure
from jobs.admission.dispatcher import stage_queue

DEMO_USERNAME = "demo"
DEMO_GRANTS = ["demo:*", "store:write", "net:call", "approve:*"]
CONTROL_QUEUE = "control"
WORKER_NAME = "worker"
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def worker_queues() -> list[str]:
    """Every queue a job message can go to: the three stage queues, their per-scope variants
    (``JOBS_SCOPE_QUEUES``) and the housekeeping queue."""
    queues = list(settings.JOB_QUEUES)
    for scope in settings.JOBS_SCOPE_QUEUES:
        queues += [stage_queue(stage, scope) for stage in settings.JOB_QUEUES]
    queues.append(CONTROL_QUEUE)
    return list(dict.fromkeys(queues))


def worker_answers() -> bool:
    """Whether the platform's worker answers a remote-control ping over the broker."""
    try:
        return bool(current_app.control.ping(destination=[f"{WORKER_NAME}@{socket.gethostname()}"], timeout=0.5))
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
                web_workers: int, web_threads: int, log_level: str) -> list[ChildSpec]:
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
        specs.append(ChildSpec("flower", [*celery, "flower", f"--address={host}", f"--port={flower_port}",
                                          f"--logging={log_level.lower()}"], start_when=worker_answers))
    return specs


class Command(BaseCommand):
    help = (
        "Run the platform in the foreground (web, worker, beat, Flower) on the configured database "
        "and broker; SQLite and a filesystem broker under PLATFORM_VAR_DIR when none is configured."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1",
                            help="address web and Flower bind to (add it to DJANGO_ALLOWED_HOSTS)")
        parser.add_argument("--port", type=int, default=8000, help="web port (default 8000)")
        parser.add_argument("--flower-port", type=int, default=5555, help="Flower port (default 5555)")
        parser.add_argument("--no-flower", action="store_true", help="do not start Flower")
        parser.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2)")
        parser.add_argument("--web-workers", type=int, default=2, help="gunicorn processes (default 2)")
        parser.add_argument("--web-threads", type=int, default=8,
                            help="threads per gunicorn process; each open event stream holds one (default 8)")
        parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                            default=os.environ.get("LOG_LEVEL", "WARNING").upper(),
                            help="log level of every child; INFO shows each task (default: LOG_LEVEL or WARNING)")
        parser.add_argument("--stop-timeout", type=float, default=20.0,
                            help="seconds children get to stop before they are killed (default 20)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["concurrency"] < 1 or options["web_workers"] < 1 or options["web_threads"] < 1:
            raise CommandError("--concurrency, --web-workers and --web-threads must be at least 1")
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

        # 2. database, static files, demo principal.
        self._say(f"database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]} "
                  f"{settings.DATABASES['default'].get('NAME')}; broker: {settings.CELERY_BROKER_URL}")
        if settings.CELERY_BROKER_URL.startswith("filesystem://"):
            opts = settings.CELERY_BROKER_TRANSPORT_OPTIONS
            filesystem_broker_prune(queue_dir=Path(opts["data_folder_in"]), control_dir=Path(opts["control_folder"]))
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        demo = principal_ensure(
            username=DEMO_USERNAME, grants=DEMO_GRANTS, staff=True, superuser=True, password=password,
            token_key=os.environ.get("PLATFORM_DEMO_TOKEN") or None,
        )
        connections.close_all()  # the children open their own; keep no SQLite handle here

        # 3. children.
        host, port, flower_port = options["host"], options["port"], options["flower_port"]
        with_flower = not options["no_flower"]
        base = f"http://{host}:{port}"
        specs = child_specs(host=host, port=port, flower_port=flower_port, with_flower=with_flower,
                            concurrency=options["concurrency"], web_workers=options["web_workers"],
                            web_threads=options["web_threads"], log_level=options["log_level"])

        def on_ready(elapsed: float) -> None:
            flower_user, _, flower_password = flower_auth.partition(":")
            lines = [
                "",
                "=" * 72,
                f"  Web        {base}/",
                f"  API        {base}/api/v1/jobs   (docs {base}/api/docs/, schema {base}/api/schema/)",
                f"  API token  {demo.token}   (principal {DEMO_USERNAME})",
                f"  Admin      {base}/admin/   login {DEMO_USERNAME} / {password}",
            ]
            if with_flower:
                lines.append(f"  Flower     http://{host}:{flower_port}/   login {flower_user} / {flower_password}")
            lines += [f"  Data       {var_dir}", "  Stop       Ctrl-C", "=" * 72, ""]
            self.stdout.write("\n".join(lines))
            self.stdout.write(f"platform ready: {base}/ (answered after {elapsed:.1f}s)")
            self.stdout.flush()

        supervisor = Supervisor(
            specs=specs, cwd=Path(settings.BASE_DIR), base_env=child_env,
            ready_urls=[f"{base}/admin/login/", *([f"http://{host}:{flower_port}/healthcheck"] if with_flower else [])],
            on_ready=on_ready, out=sys.stdout,
            stop_timeout=options["stop_timeout"],
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
