"""The Celery application. Every ``CELERY_*`` Django setting is applied here (namespace CELERY)."""

from __future__ import annotations

import logging.config
import os

from celery import Celery, signals
from click import Option
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

@signals.setup_logging.connect
def _use_django_logging(**_: object) -> None:
    """Workers and beat log through ``settings.LOGGING`` (JSON lines, the job-context filter)
    instead of Celery's own format: a connected receiver makes Celery skip its setup
    (celery/app/log.py ``setup_logging_subsystem``); the level is LOG_LEVEL, not ``-l``."""
    logging.config.dictConfig(settings.LOGGING)


# ``celery -A config worker --scopes crm,demo`` locks this worker to those scopes: it refuses
# (and stamps) any job of another scope before its handler runs. Same as JOBS_WORKER_SCOPES.
# Celery adds "preload" user options to every sub-command and delivers their values through the
# ``user_preload_options`` signal before the command body runs (celery/bin/celery.py, the
# ``preload_options`` loop; celery/bin/base.py ``handle_preload_options``), i.e. before the
# worker forks its pool, so the children inherit the setting.
app.user_options["preload"].add(
    Option(["--scopes"], default=None, help="Comma-separated scopes this worker executes (default: all).")
)


@signals.user_preload_options.connect
def _apply_scopes_option(options: dict[str, object], **_: object) -> None:
    value = options.get("scopes")
    if not value:
        return
    scopes = [s.strip() for s in str(value).split(",") if s.strip()]
    os.environ["JOBS_WORKER_SCOPES"] = ",".join(scopes)
    if settings.configured:
        # Settings may already be loaded (the app reads CELERY_* from them); set both.
        settings.JOBS_WORKER_SCOPES = scopes
