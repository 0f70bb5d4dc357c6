"""The task monitor in headless Chromium: live counts per session, cancel all with a confirmation
that states the number, pause and resume. Screenshots go to ``artifacts/screenshots/``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from jobs.models import Job, JobStatus, SessionControl
from jobs.services.submit import SubmitSpec, job_submit
from tests.factories import JobFactory
from tests.harness import wait_until
from tests.test_console_browser import page, shot  # noqa: F401 — the shared browser fixture

pytestmark = [pytest.mark.browser]


def _submit(principal: Any, session: str, **kw: Any) -> Job:
    return job_submit(principal=principal.user, spec=SubmitSpec(job_type="demo.noop", inputs={},
                                                                session_id=session, **kw)).job


def test_operator_watches_cancels_and_pauses_sessions(transactional_db: None, live_server: Any, page: Any,  # noqa: F811
                                                      principal: Any, make_principal: Any) -> None:
    # given an agent's session with 1,200 queued jobs (held back by run_after), another session
    # with a job waiting for approval, and an operator
    later = timezone.now() + timedelta(hours=1)
    flood = [_submit(principal, "mon-flood", run_after=later) for _ in range(3)]
    template = Job.objects.get(pk=flood[0].pk)
    JobFactory.create_bulk(1197, session_id="mon-flood", principal=principal.user, run_after=later,
                           created_at=template.created_at)
    pending = _submit(principal, "mon-review", constraints={"requires_human_ack": True})
    make_principal("operator", (), staff=True, password="operator-pass-1")
    base = live_server.url

    # when the operator logs in and opens the monitor from the admin index
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "operator-pass-1")
    page.click("input[type=submit]")
    page.click("#jobs-monitor-link a")
    flood_row = 'tr[data-session="mon-flood"]'
    page.wait_for_selector(f'{flood_row} td[data-status="queued"]')
    # then it shows the counts by status, the pending approval and links to the jobs
    assert page.inner_text(f'{flood_row} td[data-status="queued"]') == "1,200"
    review_row = 'tr[data-session="mon-review"]'
    assert page.inner_text(f'{review_row} td[data-status="approvals"]') == "1"
    assert page.inner_text("#monitor-approvals") == "1"
    assert page.locator(f'a[href="/admin/jobs/job/{pending.pk}/change/"]').count() == 1
    shot(page, "monitor-01-sessions")

    # when a new job arrives, the page updates by itself
    _submit(principal, "mon-flood", run_after=later)
    page.wait_for_function(
        f"""document.querySelector('{flood_row} td[data-status="queued"]').textContent === "1,201" """
    )

    # when the operator cancels all of the flooding session, confirming the stated number
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.click(f'{flood_row} button[data-action="cancel"]')
    page.wait_for_function(
        f"""document.querySelector('{flood_row} td[data-status="cancelled"]').textContent === "1,201" """
    )
    # then the confirmation said how many, and every one of them is cancelled
    assert dialogs and dialogs[0].startswith("Cancel 1,201 queued jobs of session mon-flood")
    assert Job.objects.filter(session_id="mon-flood", status=JobStatus.CANCELLED).count() == 1201
    shot(page, "monitor-02-after-cancel-all")

    # when the operator pauses, then resumes, the other session
    page.click(f'{review_row} button[data-action="pause"]')
    page.wait_for_selector(f"{review_row} .paused")
    assert SessionControl.objects.get(session_id="mon-review").paused is True
    shot(page, "monitor-03-paused")
    page.click(f'{review_row} button[data-action="resume"]')
    wait_until(lambda: not SessionControl.objects.get(session_id="mon-review").paused, timeout=10,
               message="resume")
    page.wait_for_selector(f'{review_row} button[data-action="pause"]')


def test_monitor_is_staff_only(client: Any, principal: Any) -> None:
    # given a non-staff principal logged in
    client.force_login(principal.user)
    # when it asks for the monitor and its data
    page_response = client.get("/admin/monitor/")
    data_response = client.get("/admin/monitor/data")
    # then both send it to the admin login
    assert page_response.status_code == 302 and "/admin/login/" in page_response["Location"]
    assert data_response.status_code == 302
