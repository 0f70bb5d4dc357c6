"""Retention from REST, the task monitor and the daily beat task: a dry run counts, a real run
deletes old terminal jobs with their stamps, webhook deliveries and Celery results, leaves its
retention stamp, and never touches a job that has not ended (pending approvals included)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from celery.schedules import crontab
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone
from django_celery_results.models import TaskResult
from rest_framework.test import APIClient

from audit.models import AuditStamp
from audit.services import RETENTION_CHAIN
from jobs.models import Job, JobRun, JobStatus
from jobs.services.control import jobs_cancel
from jobs.services.retention import retention_scheduled
from jobs.services.submit import SubmitSpec, job_submit
from webhooks.models import Delivery

pytestmark = pytest.mark.django_db
OLD = timedelta(days=40)


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]


def _job(principal: Any, session: str, **spec: Any) -> Job:
    spec.setdefault("run_after", timezone.now() + timedelta(hours=1))
    return job_submit(principal=principal.user, spec=SubmitSpec(job_type="demo.noop", inputs={},
                                                                session_id=session, **spec)).job


@pytest.fixture
def history(principal: Any) -> dict[str, Any]:
    """Two old ended jobs (one with a webhook delivery), a recent ended one, an old pending
    approval, an old queued job, and Celery results old and new."""
    old_a = _job(principal, "s-old", callback_url="http://127.0.0.1:9/hook")
    old_b = _job(principal, "s-old")
    recent = _job(principal, "s-recent")
    jobs_cancel(jobs=Job.objects.filter(pk__in=[old_a.pk, old_b.pk, recent.pk]), actor="test")
    Job.objects.filter(pk__in=[old_a.pk, old_b.pk]).update(finished_at=timezone.now() - OLD)
    waiting = _job(principal, "s-wait", constraints={"requires_human_ack": True})
    queued = _job(principal, "s-wait")
    Job.objects.filter(pk__in=[waiting.pk, queued.pk]).update(created_at=timezone.now() - OLD)
    TaskResult.objects.create(task_id="old-result", status="SUCCESS")
    TaskResult.objects.filter(task_id="old-result").update(date_done=timezone.now() - OLD)
    TaskResult.objects.create(task_id="new-result", status="SUCCESS")
    assert Delivery.objects.filter(job=old_a).count() == 1
    return {"old": [old_a.pk, old_b.pk], "recent": recent.pk, "waiting": waiting.pk, "queued": queued.pk}


def _client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def test_rest_cleanup_dry_run_then_real_run(history: dict[str, Any], make_principal: Any) -> None:
    staff = _client(make_principal("ops", (), staff=True).token)
    stamps_before = AuditStamp.objects.count()
    # when staff asks for a dry run
    response = staff.post("/api/v1/jobs/cleanup", {"older_than_days": 30, "dry_run": True}, format="json")
    # then it counts the two old ended jobs and the old task result, and deletes nothing
    assert response.status_code == 200
    body = response.json()
    assert body["would_delete"] == 2 and body["dry_run"] is True and "deleted" not in body
    assert body["task_results"] == 1 and body["stamps"] > 0
    assert Job.objects.count() == 5 and AuditStamp.objects.count() == stamps_before
    # when it runs for real
    body = staff.post("/api/v1/jobs/cleanup", {"older_than_days": 30, "dry_run": False}, format="json").json()
    # then exactly those went, with their stamps, deliveries and the old Celery result
    assert body["deleted"] == 2 and body["dry_run"] is False and body["task_results"] == 1
    assert not Job.objects.filter(pk__in=history["old"]).exists()
    assert not AuditStamp.objects.filter(job_id__in=history["old"]).exists()
    assert not Delivery.objects.filter(job_id__in=history["old"]).exists()
    assert list(TaskResult.objects.values_list("task_id", flat=True)) == ["new-result"]
    # and the purge left its own stamp
    purge = AuditStamp.objects.filter(job_id=RETENTION_CHAIN).latest("seq")
    assert purge.event == "retention_purge" and purge.details["jobs"] == 2
    assert purge.seq in body["retention_stamps"]
    # and everything not ended, or ended recently, is still there
    survivors = dict(Job.objects.values_list("pk", "status"))
    assert survivors == {history["recent"]: JobStatus.CANCELLED, history["waiting"]: JobStatus.PENDING_APPROVAL,
                         history["queued"]: JobStatus.QUEUED}


def test_zero_days_still_spares_jobs_that_have_not_ended(history: dict[str, Any], make_principal: Any) -> None:
    staff = _client(make_principal("ops", (), staff=True).token)
    body = staff.post("/api/v1/jobs/cleanup", {"older_than_days": 0, "dry_run": False}, format="json").json()
    assert body["deleted"] == 3
    assert set(Job.objects.values_list("status", flat=True)) == {JobStatus.PENDING_APPROVAL, JobStatus.QUEUED}


def test_rest_cleanup_is_for_staff_only(history: dict[str, Any], api: APIClient, make_principal: Any) -> None:
    # a principal that is not staff is refused, and nothing changes
    response = api.post("/api/v1/jobs/cleanup", {"older_than_days": 0, "dry_run": False}, format="json")
    assert response.status_code == 403 and response.json()["code"] == "permission_denied"
    assert Job.objects.count() == 5
    assert APIClient().post("/api/v1/jobs/cleanup", {"older_than_days": 0}, format="json").status_code == 401
    # and a malformed request from staff is a 400, not a guess
    staff = _client(make_principal("ops", (), staff=True).token)
    for bad in ({"older_than_days": -1}, {}, {"older_than_days": "many"}):
        response = staff.post("/api/v1/jobs/cleanup", bad, format="json")
        assert response.status_code == 400 and response.json()["code"] == "invalid_request", bad
    # and without dry_run it only counts
    assert staff.post("/api/v1/jobs/cleanup", {"older_than_days": 30}, format="json").json()["would_delete"] == 2
    assert Job.objects.count() == 5


def test_the_task_monitor_counts_before_it_deletes(history: dict[str, Any], make_principal: Any) -> None:
    make_principal("operator", (), staff=True, password="operator-pass-1")
    browser = Client()
    assert browser.login(username="operator", password="operator-pass-1")
    page = browser.get("/admin/monitor/").content.decode()
    assert 'id="retention-count"' in page and 'id="retention-delete" disabled' in page
    counted = browser.post("/admin/monitor/cleanup", {"older_than_days": "30", "dry_run": "1"}).json()
    assert counted["would_delete"] == 2 and Job.objects.count() == 5
    done = browser.post("/admin/monitor/cleanup", {"older_than_days": "30", "dry_run": "0"}).json()
    assert done["deleted"] == 2 and Job.objects.count() == 3
    assert browser.post("/admin/monitor/cleanup", {"older_than_days": "x"}).status_code == 400
    # and a non-staff session never reaches it
    outsider = Client()
    assert outsider.post("/admin/monitor/cleanup", {"older_than_days": "0", "dry_run": "0"}).status_code == 302
    assert Job.objects.count() == 3


def test_the_daily_run_uses_the_setting_and_zero_turns_it_off(history: dict[str, Any], settings: Any,
                                                              caplog: Any) -> None:
    # given retention turned off
    settings.JOBS_RETENTION_DAYS = 0
    assert retention_scheduled() is None
    assert Job.objects.count() == 5
    # given 30 days
    settings.JOBS_RETENTION_DAYS = 30
    with caplog.at_level(logging.INFO, logger="jobs.services.retention"):
        report = retention_scheduled()
    # then the old ended jobs go, and the log says what went
    assert report is not None and report.jobs == 2
    assert "retention removed 2 job(s)" in caplog.text
    assert JobRun.objects.filter(job_id__in=history["old"]).count() == 0


def test_beat_runs_retention_daily_at_three() -> None:
    entry = django_settings.CELERY_BEAT_SCHEDULE["jobs-retention"]
    assert entry["task"] == "jobs.retention"
    assert entry["schedule"] == crontab(hour=3, minute=0)
    assert django_settings.CELERY_TASK_ROUTES["jobs.retention"] == {"queue": "control"}
