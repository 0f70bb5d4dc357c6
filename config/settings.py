"""Settings, read once from the environment.

Every value comes from an environment variable with a safe default for the embedded first run
(SQLite + kombu's filesystem transport). Malformed values fail fast with ImproperlyConfigured:
a typo in a time limit must not silently disable it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import django_stubs_ext
import environ
from django.core.exceptions import ImproperlyConfigured

# Lets admin and querysets be subscripted at runtime (``admin.ModelAdmin[Job]``) for typing.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()


def _int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.str(name, default=str(default))
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.str(name, default=str(default))
    try:
        value = float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from exc
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    return value


def _bool(name: str, default: bool) -> bool:
    raw = env.str(name, default="1" if default else "0").strip().lower()
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off", ""}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def _list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env.str(name, default=default).split(",") if item.strip()]


VAR_DIR = Path(env.str("PLATFORM_VAR_DIR", default=str(BASE_DIR / "var")))

DEBUG = _bool("DJANGO_DEBUG", False)
_DEV_SECRET = "dev-only-insecure-secret-key-change-me-0123456789abcdef"
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if not _bool("PLATFORM_DEV", True):
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is required when PLATFORM_DEV=0")
    SECRET_KEY = _DEV_SECRET
ALLOWED_HOSTS = _list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = _list("DJANGO_CSRF_TRUSTED_ORIGINS", "http://127.0.0.1:8000,http://localhost:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django_celery_results",
    "django_celery_beat",
    "audit",
    "governance",
    "jobs",
    "approvals",
    "examples",
    "mcp_server",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "config.middleware.ApiGuardMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
_default_db = f"sqlite:///{VAR_DIR / 'platform.sqlite3'}"
try:
    DATABASES = {"default": env.db_url("DATABASE_URL", default=_default_db)}
except Exception as exc:  # django-environ raises several types for a bad URL
    raise ImproperlyConfigured(f"DATABASE_URL is malformed: {exc}") from exc
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    _name = str(DATABASES["default"].get("NAME") or "")
    if _name and _name != ":memory:":
        Path(_name).parent.mkdir(parents=True, exist_ok=True)
    # WAL lets the web server, workers and beat read while one writes; IMMEDIATE transactions
    # take the write lock up front so two writers queue on the busy timeout instead of failing
    # with "database is locked" when a read transaction tries to upgrade.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", _int("DATABASE_CONN_MAX_AGE", 60))
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", _int("DATABASE_CONNECT_TIMEOUT", 5))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Bodies above this size are refused with 413 before any parsing.
API_MAX_BODY_BYTES = _int("API_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES

# --- REST -----------------------------------------------------------------------------------
REST_FRAMEWORK: dict[str, Any] = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "config.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Governed job platform API",
    "DESCRIPTION": "Submit, watch and control governed asynchronous jobs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- Celery ---------------------------------------------------------------------------------
# The host part means nothing to the filesystem transport; naming one stops kombu warning
# "No hostname was supplied" on every connection.
_broker_default = "filesystem://localhost/"
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=_broker_default)
if "://" not in CELERY_BROKER_URL:
    raise ImproperlyConfigured(f"CELERY_BROKER_URL must be a URL, got {CELERY_BROKER_URL!r}")

# Must exceed the longest job's max runtime plus grace: with acks_late an unacked message is
# redelivered after the visibility timeout, so a shorter one would run a long job twice.
CELERY_VISIBILITY_TIMEOUT_S = _int("CELERY_VISIBILITY_TIMEOUT_S", 3600, minimum=60)
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = Path(env.str("CELERY_FILESYSTEM_DIR", default=str(VAR_DIR / "broker")))
    # kombu's filesystem transport creates none of these (kombu/transport/filesystem.py lists
    # and writes them as they are, and mkdirs the control folder without parents).
    for _sub in ("queue", "control", "processed"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "control_folder": str(_broker_dir / "control"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
        "polling_interval": _float("CELERY_POLLING_INTERVAL_S", 0.1, minimum=0.01),
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": CELERY_VISIBILITY_TIMEOUT_S,
        "socket_connect_timeout": _float("CELERY_BROKER_CONNECT_TIMEOUT_S", 3.0, minimum=0.1),
        # A broker that accepts connections but does not answer (hung, overloaded) blocks every
        # publish, and a submit publishes inside its request: with 10 s and redis-py repeating
        # a timed-out command a submit waited 40-100 s; with 3 s and no repeat about 6-9 s
        # (docs/reliability.md). Must stay above kombu's BRPOP timeout (1 s).
        "socket_timeout": _float("CELERY_BROKER_SOCKET_TIMEOUT_S", 3.0, minimum=1.5),
        "retry_on_timeout": _bool("CELERY_BROKER_RETRY_ON_TIMEOUT", False),
        "health_check_interval": 10,
    }
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="django-db")
CELERY_RESULT_EXTENDED = True
CELERY_TASK_IGNORE_RESULT = True  # the Job row is the result; see docs/architecture.md
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TRACK_STARTED = False
# Celery's Django fixup closes every DB connection before and after each task unless this is set
# (celery/fixups/django.py, DjangoWorkerFixup.close_database): a new PostgreSQL connection per
# task. Keep them instead, and let jobs.tasks call close_old_connections() around every task, as
# Django does around a request, so CONN_MAX_AGE and CONN_HEALTH_CHECKS still drop bad ones.
CELERY_DB_REUSE_MAX = _int("CELERY_DB_REUSE_MAX", 1000, minimum=0)
CELERY_WORKER_SEND_TASK_EVENTS = _bool("CELERY_WORKER_SEND_TASK_EVENTS", True)
CELERY_TASK_SEND_SENT_EVENT = _bool("CELERY_TASK_SEND_SENT_EVENT", True)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
CELERY_TASK_DEFAULT_QUEUE = "control"
JOB_QUEUES = ("intake", "execute", "finalize")
CELERY_TASK_ROUTES = {
    "jobs.intake": {"queue": "intake"},
    "jobs.execute": {"queue": "execute"},
    "jobs.finalize": {"queue": "finalize"},
    "jobs.dispatch_tick": {"queue": "control"},
    "jobs.reap_leases": {"queue": "control"},
    "approvals.expire": {"queue": "control"},
    "approvals.repair": {"queue": "control"},
    "jobs.enforce_cancels": {"queue": "control"},
}
# Publishing happens after commit, sometimes inside an HTTP request: give up fast when the
# broker is down, the job stays queued in the database and the dispatcher publishes it later.
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": _int("CELERY_PUBLISH_MAX_RETRIES", 1),
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
JOBS_DISPATCH_TICK_S = _float("JOBS_DISPATCH_TICK_S", 2.0, minimum=0.1)
JOBS_REAPER_TICK_S = _float("JOBS_REAPER_TICK_S", 5.0, minimum=0.1)
APPROVALS_EXPIRE_TICK_S = _float("APPROVALS_EXPIRE_TICK_S", 5.0, minimum=0.1)
# How often running jobs whose cancel grace ran out are terminated (jobs.enforce_cancels).
JOBS_CANCEL_ENFORCE_TICK_S = _float("JOBS_CANCEL_ENFORCE_TICK_S", 2.0, minimum=0.1)
CELERY_BEAT_SCHEDULE = {
    "jobs-dispatch-tick": {"task": "jobs.dispatch_tick", "schedule": JOBS_DISPATCH_TICK_S},
    "jobs-reap-leases": {"task": "jobs.reap_leases", "schedule": JOBS_REAPER_TICK_S},
    "approvals-expire": {"task": "approvals.expire", "schedule": APPROVALS_EXPIRE_TICK_S},
    "approvals-repair": {"task": "approvals.repair", "schedule": APPROVALS_EXPIRE_TICK_S * 6},
    "jobs-enforce-cancels": {"task": "jobs.enforce_cancels", "schedule": JOBS_CANCEL_ENFORCE_TICK_S},
}

# --- Jobs -----------------------------------------------------------------------------------
# How many jobs may be published-but-unfinished at once; the rest wait in the database.
JOBS_MAX_IN_FLIGHT = _int("JOBS_MAX_IN_FLIGHT", 200, minimum=1)
JOBS_DISPATCH_BATCH = _int("JOBS_DISPATCH_BATCH", 100, minimum=1)
# A queued job whose message has not been claimed after this long is published again (the
# first message may have been lost with a broker restart); duplicates are refused by the claim.
JOBS_REDISPATCH_AFTER_S = _int("JOBS_REDISPATCH_AFTER_S", 60, minimum=1)
JOBS_LEASE_S = _int("JOBS_LEASE_S", 30, minimum=2)
JOBS_HEARTBEAT_S = _float("JOBS_HEARTBEAT_S", 5.0, minimum=0.1)
JOBS_CANCEL_POLL_S = _float("JOBS_CANCEL_POLL_S", 0.5, minimum=0.05)
JOBS_TIME_LIMIT_GRACE_S = _int("JOBS_TIME_LIMIT_GRACE_S", 10, minimum=1)
JOBS_MAX_CLAIMS_PER_STAGE = _int("JOBS_MAX_CLAIMS_PER_STAGE", 5, minimum=1)
# A running job asked to cancel gets this long to stop on its own (ctx.cancelled) before its
# worker process is terminated with JOBS_CANCEL_SIGNAL (Celery revoke with terminate=True).
JOBS_CANCEL_GRACE_S = _float("JOBS_CANCEL_GRACE_S", 10.0, minimum=0.0)
JOBS_CANCEL_SIGNAL = env.str("JOBS_CANCEL_SIGNAL", default="SIGKILL")
if JOBS_CANCEL_SIGNAL not in {"SIGKILL", "SIGTERM"}:
    raise ImproperlyConfigured(f"JOBS_CANCEL_SIGNAL must be SIGKILL or SIGTERM, got {JOBS_CANCEL_SIGNAL!r}")
# Fair share: in-flight cap of one agent session unless its principal or the session sets one.
JOBS_SESSION_MAX_CONCURRENCY = _int("JOBS_SESSION_MAX_CONCURRENCY", 3, minimum=1)
JOBS_TYPE_MODULES = _list("JOBS_TYPE_MODULES", "examples.job_types")
# Scopes this process's workers execute; "*" means all.
JOBS_WORKER_SCOPES = _list("JOBS_WORKER_SCOPES", "*")
# Scopes with queues of their own (``execute.crm``…), consumed by workers locked to them.
JOBS_SCOPE_QUEUES = _list("JOBS_SCOPE_QUEUES", "")
JOBS_MODEL_VERSION = env.str("JOBS_MODEL_VERSION", default="none")
JOBS_SECRET_KEY = env.str("JOBS_SECRET_KEY", default="")

FLOWER_BASIC_AUTH = env.str("FLOWER_BASIC_AUTH", default="")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Approvals ------------------------------------------------------------------------------
APPROVAL_TTL_S = _int("APPROVAL_TTL_S", 24 * 3600, minimum=1)

# --- Server-sent events ---------------------------------------------------------------------
API_SSE_POLL_S = _float("API_SSE_POLL_S", 0.5, minimum=0.05)
API_SSE_MAX_S = _float("API_SSE_MAX_S", 300.0, minimum=1.0)

# --- MCP server (/mcp, docs/mcp.md) -------------------------------------------------------
# The ttl every task reports: how long a finished job stays readable. Keep the retention of
# `manage.py cleanup --older-than-days` at or above it.
MCP_TASK_TTL_S = _int("MCP_TASK_TTL_S", 30 * 24 * 3600, minimum=60)
# Poll intervals suggested to clients: for work in progress, and for a job waiting for a human.
MCP_POLL_INTERVAL_MS = _int("MCP_POLL_INTERVAL_MS", 1000, minimum=100)
MCP_APPROVAL_POLL_INTERVAL_MS = _int("MCP_APPROVAL_POLL_INTERVAL_MS", 5000, minimum=100)
# How often a waiting request (a call without tasks, tasks/result, tasks/cancel) re-reads its job.
MCP_WAIT_POLL_S = _float("MCP_WAIT_POLL_S", 0.3, minimum=0.05)
# A call without tasks waits at most the job's max runtime per stage plus this.
MCP_SYNC_WAIT_GRACE_S = _float("MCP_SYNC_WAIT_GRACE_S", 30.0, minimum=0.0)
# Job types whose max runtime exceeds this are tools with taskSupport "required".
MCP_LONG_RUNTIME_S = _int("MCP_LONG_RUNTIME_S", 60, minimum=1)
# How often task status notifications are checked for (one query for all watched tasks).
MCP_STATUS_NOTIFY_S = _float("MCP_STATUS_NOTIFY_S", 1.0, minimum=0.05)
MCP_LIST_PAGE_SIZE = _int("MCP_LIST_PAGE_SIZE", 50, minimum=1)
