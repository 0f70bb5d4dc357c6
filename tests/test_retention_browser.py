"""Retention from the task monitor in headless Chromium: a dry-run count first, then a deletion
whose confirmation states that count. Screenshots go to ``artifacts/screenshots/``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from jobs.models import Job, JobStatus
from jobs.services.control import jobs_cancel
from jobs.services.submit import SubmitSpec, job_submit
from tests.test_console_browser import page, shot  # noqa: F401 — the shared browser fixture

pytestmark = [pytest.mark.browser]


def test_operator_counts_then_deletes_old_jobs(transactional_db: None, live_server: Any, page: Any,  # noqa: F811
                                               principal: Any, make_principal: Any) -> None:
    # given three ended jobs finished 40 days ago and one waiting for approval just as long
    later = timezone.now() + timedelta(hours=1)
    old = [job_submit(principal=principal.user, spec=SubmitSpec(job_type="demo.noop", inputs={},
                                                                 session_id="ret", run_after=later)).job
           for _ in range(3)]
    jobs_cancel(jobs=Job.objects.filter(pk__in=[j.pk for j in old]), actor="test")
    Job.objects.filter(pk__in=[j.pk for j in old]).update(finished_at=timezone.now() - timedelta(days=40))
    waiting = job_submit(principal=principal.user, spec=SubmitSpec(
        job_type="demo.noop", inputs={}, session_id="ret", constraints={"requires_human_ack": True})).job
    make_principal("operator", (), staff=True, password="operator-pass-1")
    page.goto(f"{live_server.url}/admin/login/?next=/admin/monitor/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "operator-pass-1")
    page.click("input[type=submit]")
    page.wait_for_selector("#retention-count")
    # then deleting is not offered before a count
    assert page.is_disabled("#retention-delete")
    # when the operator counts jobs older than 30 days
    page.fill("#retention-days", "30")
    page.click("#retention-count")
    page.wait_for_function("document.getElementById('retention-result').textContent.startsWith('Would delete')")
    # then the dry run's number is shown and nothing is gone yet
    assert page.inner_text("#retention-result").startswith("Would delete 3 jobs")
    assert Job.objects.count() == 4
    shot(page, "retention-01-counted")
    # when the operator deletes, the confirmation states that number
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.click("#retention-delete")
    page.wait_for_function("document.getElementById('retention-result').textContent.startsWith('Deleted')")
    assert dialogs == ["Delete 3 terminal jobs finished more than 30 days ago? This cannot be undone."]
    assert page.inner_text("#retention-result").startswith("Deleted 3 jobs")
    shot(page, "retention-02-deleted")
    # and the job still waiting for a human is untouched
    assert list(Job.objects.values_list("pk", "status")) == [(waiting.pk, JobStatus.PENDING_APPROVAL)]
