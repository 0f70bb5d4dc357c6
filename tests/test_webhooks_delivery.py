"""Webhook delivery rows and attempts, in-process against a real receiver on 127.0.0.1.

The rows are written in the transaction of the move (or not at all); an attempt claims its row,
so a duplicate message does nothing; redirects are not followed; the whole exchange has a hard
deadline; a large result is linked, not inlined.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from jobs.models import Job, JobStatus
from jobs.services.control import jobs_cancel
from jobs.services.submit import SubmitSpec, job_submit
from tests.webhook_receiver import receiver
from webhooks.events import event_body, event_payload
from webhooks.models import Delivery, DeliveryStatus
from webhooks.services import deliveries_publish_due, deliveries_redeliver, delivery_attempt

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _webhook_settings(settings: Any) -> None:
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    settings.WEBHOOK_BACKOFF_BASE_S = 5.0
    settings.WEBHOOK_TIMEOUT_S = 10.0


def _held_job(principal: Any, url: str, session: str = "s-hook") -> Job:
    """A queued job with a callback_url that no dispatcher will admit for an hour."""
    spec = SubmitSpec(job_type="demo.noop", inputs={}, session_id=session, callback_url=url,
                      run_after=timezone.now() + timedelta(hours=1))
    return job_submit(principal=principal.user, spec=spec).job


def _cancel(job: Job) -> Delivery:
    jobs_cancel(jobs=Job.objects.filter(pk=job.pk), actor="test")
    return Delivery.objects.get(job=job)


def test_the_row_commits_with_the_transition_or_not_at_all(principal: Any) -> None:
    # given a queued job with a callback_url
    job = _held_job(principal, "http://127.0.0.1:9/hook")
    # when its cancel rolls back
    with pytest.raises(RuntimeError), transaction.atomic():
        jobs_cancel(jobs=Job.objects.filter(pk=job.pk), actor="test")
        assert Delivery.objects.filter(job=job).count() == 1
        raise RuntimeError("abort")
    # then there is no event either
    assert not Delivery.objects.filter(job=job).exists()
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED
    # when the cancel commits, there is exactly one, pending and due now
    row = _cancel(job)
    assert row.status == DeliveryStatus.PENDING and row.event_type == "job.cancelled"
    assert row.target == "http://127.0.0.1:9/hook" and row.next_attempt_at <= timezone.now()
    assert row.payload["data"]["reason"] == "cancelled" and row.payload["data"]["error_class"] == "cancelled"
    assert row.give_up_at - row.created_at == timedelta(hours=24)


def test_a_bulk_move_records_each_event_and_publishes_only_the_first_batch(
        principal: Any, settings: Any, django_capture_on_commit_callbacks: Any) -> None:
    # given five jobs with a callback and one without
    settings.WEBHOOK_PUBLISH_AT_ONCE = 3
    jobs = [_held_job(principal, f"http://127.0.0.1:9/hook/{i}", session="s-bulk") for i in range(5)]
    spec = SubmitSpec(job_type="demo.noop", inputs={}, session_id="s-bulk",
                      run_after=timezone.now() + timedelta(hours=1))
    job_submit(principal=principal.user, spec=spec)
    # when the session is cancelled in one go
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        result = jobs_cancel(jobs=Job.objects.filter(session_id="s-bulk"), actor="test")
    # then every job with a callback has its event, and three go out after commit
    assert result.cancelled_count == 6
    rows = Delivery.objects.filter(job__session_id="s-bulk")
    assert sorted(r.target for r in rows) == sorted(j.callback_url for j in jobs)
    assert rows.filter(published_at__isnull=False).count() == 3
    assert len({r.event_id for r in rows}) == 5
    assert any(getattr(getattr(cb, "func", None), "__name__", "") == "deliveries_publish" for cb in callbacks)
    # and the tick publishes the other two
    with django_capture_on_commit_callbacks(execute=False):
        assert deliveries_publish_due() == 2
    assert rows.filter(published_at__isnull=True).count() == 0


def test_an_attempt_claims_its_row_and_backs_off(principal: Any) -> None:
    with receiver([500, 200]) as hook:
        # given a pending delivery
        row = _cancel(_held_job(principal, hook.url))
        # when it is attempted and the receiver fails
        assert delivery_attempt(event_id=row.event_id) == DeliveryStatus.PENDING
        row.refresh_from_db()
        # then the attempt is counted and the next one waits its backoff (5 s +/- 25 %)
        assert row.attempts == 1 and row.last_http_status == 500 and row.published_at is None
        wait = (row.next_attempt_at - timezone.now()).total_seconds()
        assert 3.0 < wait < 6.5
        # and a duplicate message before then finds nothing due and sends nothing
        assert delivery_attempt(event_id=row.event_id) == "not_due"
        assert len(hook.requests) == 1
        # when it is due again, the receiver gets the same event id and it is delivered
        Delivery.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
        assert delivery_attempt(event_id=row.event_id) == DeliveryStatus.DELIVERED
        first, second = hook.requests
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == row.event_id
        Webhook(principal.webhook_secret).verify(second.body, second.headers)
        row.refresh_from_db()
        assert row.status == DeliveryStatus.DELIVERED and row.attempts == 2 and row.finished_at is not None
        # and a delivered row is never attempted again
        assert delivery_attempt(event_id=row.event_id) == "not_due"


def test_redirects_are_not_followed(principal: Any) -> None:
    with receiver() as elsewhere, receiver([302], location="") as hook:
        hook.location = elsewhere.url
        row = _cancel(_held_job(principal, hook.url))
        # when the receiver redirects
        assert delivery_attempt(event_id=row.event_id) == DeliveryStatus.PENDING
        # then the redirect is an answer like any other non-2xx: retried later, never followed
        row.refresh_from_db()
        assert row.last_http_status == 302 and elsewhere.requests == []


def test_the_whole_exchange_has_a_hard_deadline(principal: Any, settings: Any) -> None:
    settings.WEBHOOK_TIMEOUT_S = 1.0
    with receiver(delay_s=4.0) as hook:
        row = _cancel(_held_job(principal, hook.url))
        # when the receiver takes longer than the total timeout to answer
        started = time.monotonic()
        outcome = delivery_attempt(event_id=row.event_id)
        # then the attempt gives up at the deadline and is retried later
        assert time.monotonic() - started < 2.5
        row.refresh_from_db()
        assert outcome == DeliveryStatus.PENDING and row.last_error == "timeout" and row.last_http_status is None


def test_an_unreachable_receiver_is_retried(principal: Any) -> None:
    # given a port nobody listens on
    with receiver() as hook:
        url = hook.url
    row = _cancel(_held_job(principal, url))
    assert delivery_attempt(event_id=row.event_id) == DeliveryStatus.PENDING
    row.refresh_from_db()
    assert row.last_http_status is None and "connect to 127.0.0.1" in row.last_error


def test_only_failed_or_stopped_deliveries_are_delivered_again(principal: Any) -> None:
    job = _held_job(principal, "http://127.0.0.1:9/hook")
    row = _cancel(job)
    # a pending row is left alone
    with transaction.atomic():
        assert deliveries_redeliver(deliveries=Delivery.objects.filter(pk=row.pk), actor="t") == 0
    # a failed one becomes pending, with a fresh window
    Delivery.objects.filter(pk=row.pk).update(status=DeliveryStatus.FAILED, give_up_at=timezone.now(),
                                              finished_at=timezone.now())
    assert deliveries_redeliver(deliveries=Delivery.objects.filter(pk=row.pk), actor="t") == 1
    row.refresh_from_db()
    assert row.status == DeliveryStatus.PENDING and row.finished_at is None
    assert row.give_up_at > timezone.now() + timedelta(hours=23)


def test_a_large_result_is_linked_not_inlined(principal: Any, settings: Any) -> None:
    # given a succeeded job whose result alone is larger than the body limit
    job = Job(pk="job_big", job_type="demo.noop", status=JobStatus.SUCCEEDED, session_id="s",
              result={"blob": "x" * (settings.WEBHOOK_MAX_BODY_BYTES + 10)})
    # when its event is built
    payload = event_payload(job=job, status=JobStatus.SUCCEEDED, at=timezone.now())
    # then the result is left out, flagged, and the link to the job is there instead
    assert "result" not in payload["data"] and payload["data"]["result_truncated"] is True
    assert payload["data"]["links"]["job"].endswith("/api/v1/jobs/job_big")
    assert len(event_body(payload).encode()) <= settings.WEBHOOK_MAX_BODY_BYTES
    # and a small result is inlined
    job.result = {"ok": True}
    assert event_payload(job=job, status=JobStatus.SUCCEEDED, at=timezone.now())["data"]["result"] == {"ok": True}
