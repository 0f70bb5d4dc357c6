"""The review console in headless Chromium: a reviewer approves a pending job and replays a
dead-lettered one, against a live web server and real workers on the test database.

Screenshots go to ``artifacts/screenshots/``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.admin.utils import quote

from audit.models import AuditStamp
from examples.models import ExternalRecord
from jobs.models import JobRun
from tests.conftest import IN_CI, wait_status
from tests.harness import ROOT, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
SHOTS = ROOT / "artifacts" / "screenshots"
# Flags from the machine recipes: without the background-networking ones Chromium keeps trying
# to reach outside hosts.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture
def page(live_server: Any) -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        message = f"headless Chromium not found at {CHROMIUM} (install chromium, or set CHROMIUM_PATH)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if IN_CI:
            raise
        pytest.skip("playwright is not installed")
    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes
    # between browser steps are still plain synchronous calls.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        tab = context.new_page()
        tab.set_default_timeout(15000)
        try:
            yield tab
        finally:
            context.close()
            browser.close()
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_reviewer_approves_and_replays_in_the_console(live: Any, live_server: Any, page: Any, submit: Any,
                                                      make_principal: Any) -> None:
    # given a pending job submitted by an agent, a dead-lettered job, and a reviewer
    make_principal("reviewer", ("approve:*", "jobs:replay"), staff=True, password="review-pass-1")
    job_id = submit("demo.reviewed_store_write",
                    {"key": "browser-1", "data": {"amount": 12}, "api_token": "s3cret"}).json()["job_id"]
    dead_id = submit("demo.flaky", {"permanent": True}).json()["job_id"]
    wait_status(job_id, "pending_approval")
    wait_status(dead_id, "dead_lettered")
    base = live_server.url

    # when the reviewer logs in, follows the badge and opens the review
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", "reviewer")
    page.fill("#id_password", "review-pass-1")
    page.click("input[type=submit]")
    page.wait_for_selector("#pending-approvals-count")
    assert page.inner_text("#pending-approvals-count").strip() == "1"
    shot(page, "01-admin-index-badge")
    page.click("#nav-pending-approvals")
    page.wait_for_selector(f"text={job_id}")
    shot(page, "02-pending-approvals")
    page.click(f"text={job_id}")
    page.wait_for_selector("#review-rollback")
    assert "Write record 'browser-1' to the local store" in page.inner_text("h1")
    assert "s3cret" not in page.content()
    shot(page, "03-review")
    page.fill("#id_comment", "checked the draft")
    page.click("#btn-approve")
    page.wait_for_selector("#btn-confirm")
    shot(page, "04-confirm-approve")
    page.click("#btn-confirm")
    page.wait_for_selector(".messagelist")

    # then the job commits and succeeds
    wait_status(job_id, "succeeded")
    assert ExternalRecord.objects.filter(key="browser-1").count() == 1
    shot(page, "05-after-approve")
    page.goto(f"{base}/admin/approvals/approvalrequest/?status__exact=approved")
    page.click(f"text={job_id}")
    page.wait_for_selector(".stamp-succeeded")
    shot(page, "06-approved-trail")

    # when the reviewer opens the dead-letter queue and replays the failed job
    page.click("#nav-dead-letters")
    page.wait_for_selector(f"text={dead_id}")
    shot(page, "07-dead-letter-queue")
    page.click(f"text={dead_id}")
    page.wait_for_selector("#btn-replay")
    shot(page, "08-dead-letter-detail")
    page.click("#btn-replay")
    page.wait_for_selector("#btn-confirm")
    page.click("#btn-confirm")
    page.wait_for_selector(".messagelist")

    # then it is queued again, runs from its failed stage, and the trail names the reviewer
    wait_until(lambda: JobRun.objects.filter(job_id=dead_id).count() == 2, timeout=30, message="replayed run")
    stamp = AuditStamp.objects.get(job_id=dead_id, event="replayed")
    assert stamp.actor == "principal:reviewer"
    wait_status(dead_id, "dead_lettered")  # it fails permanently again, by design
    page.goto(f"{base}/admin/jobs/deadletteredjob/{quote(dead_id)}/change/")
    page.wait_for_selector(".stamp-replayed")
    shot(page, "09-replayed-trail")
