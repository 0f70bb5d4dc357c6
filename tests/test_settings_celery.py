"""The CELERY_* settings really reach the Celery app (a typo would silently drop them)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.conf import settings

from config.celery import app


def test_reliability_settings_reach_celery() -> None:
    # given the app configured from Django settings
    conf = app.conf
    # then every reliability setting is in force
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.result_serializer == "json"
    assert conf.broker_url == settings.CELERY_BROKER_URL
    assert conf.task_routes["jobs.execute"] == {"queue": "execute"}
    assert conf.task_routes["jobs.intake"] == {"queue": "intake"}
    assert conf.task_routes["jobs.finalize"] == {"queue": "finalize"}
    assert conf.beat_scheduler == settings.CELERY_BEAT_SCHEDULER
    assert set(conf.beat_schedule) == {"jobs-dispatch-tick", "jobs-reap-leases", "jobs-enforce-cancels",
                                       "approvals-expire", "approvals-repair", "webhooks-deliver-due",
                                       "jobs-retention"}
    assert conf.task_routes["jobs.enforce_cancels"] == {"queue": "control"}
    assert conf.task_routes["webhooks.deliver"] == {"queue": "delivery"}
    assert conf.task_routes["webhooks.deliver_due"] == {"queue": "control"}


def test_every_celery_setting_is_a_known_celery_key() -> None:
    # given every CELERY_* name in settings
    from celery.app.defaults import NAMESPACES, flatten

    known = {str(item[0]).upper() for item in flatten(NAMESPACES)}
    ours = {name[len("CELERY_"):] for name in dir(settings) if name.startswith("CELERY_")}
    # then each one is a real Celery setting (ours that are not are platform knobs, listed here)
    # DB_REUSE_MAX is read by Celery's Django fixup, not its defaults table (checked below).
    platform_knobs = {"VISIBILITY_TIMEOUT_S", "DB_REUSE_MAX"}
    unknown = {name for name in ours if name not in known} - platform_knobs
    assert not unknown, f"CELERY_ settings Celery does not know (typo?): {sorted(unknown)}"


def test_task_classes_carry_reliability_defaults() -> None:
    from jobs import tasks

    for task in (tasks.intake, tasks.execute, tasks.finalize):
        assert task.acks_late is True
        assert task.reject_on_worker_lost is True
        assert task.ignore_result is True


@pytest.mark.parametrize(
    ("name", "value"),
    [("JOBS_LEASE_S", "thirty"), ("DJANGO_DEBUG", "maybe"), ("JOBS_MAX_IN_FLIGHT", "0"),
     ("DATABASE_URL", "nonsense://"), ("WEBHOOK_ALLOWED_NETWORKS", "10.0.0.0/33"),
     ("JOBS_EXTRA_TASK_ROUTES", "billing.*"), ("JOBS_RETENTION_AT", "25:00")],
)
def test_malformed_environment_fails_fast(name: str, value: str) -> None:
    # given a malformed value in the environment
    code = "import django; django.setup()"
    env = {"DJANGO_SETTINGS_MODULE": "config.settings", name: value, "PATH": "/usr/bin:/bin"}
    # when settings load
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    # then it fails with ImproperlyConfigured naming the variable
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr


def test_db_reuse_reaches_celerys_django_fixup() -> None:
    # Celery's fixup reads this exact key (celery/fixups/django.py: conf.get("CELERY_DB_REUSE_MAX")).
    assert app.conf.get("CELERY_DB_REUSE_MAX") == settings.CELERY_DB_REUSE_MAX > 0
