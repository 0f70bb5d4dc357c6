"""Signed, durable webhook deliveries with real workers and a real receiver on 127.0.0.1.

The suite's workers consume the ``delivery`` queue and run with short webhook timings
(``tests/harness.py`` FAST_ENV: backoff 0.2 s, tick 0.3 s, 127.0.0.0/8 allowed).
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from jobs.models import Job
from tests.conftest import wait_status
from tests.harness import ROOT, wait_until
from tests.webhook_receiver import receiver
from webhooks.models import Delivery, DeliveryStatus

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    # The test process validates callback URLs at submit; the workers have the same allow-list.
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]


def _secret(api: Any) -> str:
    secret = api.get("/api/v1/me").json()["webhook_secret"]
    assert secret and secret.startswith("whsec_")
    return str(secret)


def _delivery(job_id: str, status: str, timeout: float = 30.0) -> Delivery:
    return wait_until(lambda: Delivery.objects.filter(job_id=job_id, status=status).first(), timeout=timeout,
                      message=f"a {status} delivery of {job_id}")


def test_a_signed_delivery_verifies_with_the_secret_from_me(live: Any, api: Any, submit: Any) -> None:
    # given a receiver, and the principal's secret as /me shows it
    secret = _secret(api)
    with receiver() as hook:
        # when a job with a callback_url succeeds
        job_id = submit("demo.flaky", {}, callback_url=hook.url).json()["job_id"]
        wait_status(job_id, "succeeded")
        [request] = hook.wait_for(1)
        # then the event verifies with the standardwebhooks package and that secret
        event = Webhook(secret).verify(request.body, request.headers)
        assert event["type"] == "job.succeeded"
        assert event["data"]["job_id"] == job_id and event["data"]["status"] == "succeeded"
        assert event["data"]["result"] == {"attempt": 1}
        assert event["data"]["links"]["job"].endswith(f"/api/v1/jobs/{job_id}")
        assert request.path == "/hook" and request.headers["content-type"] == "application/json"
        # and the delivery row says so, with the receiver's answer
        row = _delivery(job_id, DeliveryStatus.DELIVERED)
        assert row.event_id == request.headers["webhook-id"] and row.event_type == "job.succeeded"
        assert row.attempts == 1 and row.last_http_status == 200 and '"received": true' in row.last_response
        assert row.last_address == "127.0.0.1"


def test_a_receiver_answering_500_then_200_gets_the_same_webhook_id_twice(live: Any, api: Any,
                                                                          submit: Any) -> None:
    # given a receiver that fails once
    secret = _secret(api)
    with receiver([500, 200]) as hook:
        # when a job that fails for good reports to it
        job_id = submit("demo.flaky", {"permanent": True}, callback_url=hook.url).json()["job_id"]
        wait_status(job_id, "dead_lettered")
        first, second = hook.wait_for(2)
        # then the retry carries the same event id, each attempt signed afresh
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert first.body == second.body
        for request in (first, second):
            event = Webhook(secret).verify(request.body, request.headers)
            assert event["type"] == "job.dead_lettered" and event["data"]["error_class"] == "permanent"
        row = _delivery(job_id, DeliveryStatus.DELIVERED)
        assert row.attempts == 2 and row.last_http_status == 200
        # and nothing more is sent once it is delivered
        time.sleep(1.0)
        assert len(hook.requests) == 2


def test_410_stops_the_retries(live: Any, submit: Any) -> None:
    # given a receiver that is gone
    with receiver([410]) as hook:
        # when a job reports to it
        job_id = submit("demo.noop", {}, callback_url=hook.url).json()["job_id"]
        wait_status(job_id, "succeeded")
        row = _delivery(job_id, DeliveryStatus.STOPPED)
        # then the delivery stops after that one answer: several backoffs and ticks later, still one
        hook.wait_for(1)
        time.sleep(2.0)
        assert len(hook.requests) == 1
        row.refresh_from_db()
        assert row.status == DeliveryStatus.STOPPED and row.attempts == 1 and row.last_http_status == 410


def test_a_delivery_past_its_window_fails_and_the_admin_delivers_it_again(live: Any, submit: Any,
                                                                            make_principal: Any) -> None:
    # given a receiver that keeps failing
    with receiver([503]) as hook:
        job_id = submit("demo.noop", {}, callback_url=hook.url).json()["job_id"]
        hook.wait_for(1)
        # when the retry window of the delivery ends
        Delivery.objects.filter(job_id=job_id).update(give_up_at=timezone.now() + timedelta(seconds=1))
        row = _delivery(job_id, DeliveryStatus.FAILED)
        # then it is failed, with the last answer kept
        assert row.last_http_status == 503 and row.attempts >= 2 and row.finished_at is not None
        attempts = len(hook.requests)
        time.sleep(1.0)
        assert len(hook.requests) == attempts
        # when an operator delivers it again from the admin, and the receiver is back
        hook.answers = [200]
        make_principal("operator", (), staff=True, superuser=True, password="operator-pass-1")
        browser = Client()
        assert browser.login(username="operator", password="operator-pass-1")
        response = browser.post("/admin/webhooks/delivery/", {"action": "deliver_again",
                                                               "_selected_action": [row.pk]}, follow=True)
        assert response.status_code == 200 and "will be sent again" in response.content.decode()
        # then it is delivered, under the same event id
        again = _delivery(job_id, DeliveryStatus.DELIVERED)
        assert again.event_id == row.event_id and again.attempts == row.attempts + 1
        assert hook.requests[-1].headers["webhook-id"] == row.event_id


def test_a_rotated_secret_keeps_verifying_during_the_overlap(live: Any, api: Any, submit: Any) -> None:
    # given a principal that rotates its secret
    old = _secret(api)
    new = api.post("/api/v1/me/webhook-secret/rotate").json()["webhook_secret"]
    assert new != old and _secret(api) == new
    with receiver() as hook:
        # when a delivery goes out during the overlap
        submit("demo.noop", {}, callback_url=hook.url)
        [request] = hook.wait_for(1)
        # then it carries two signatures, and a receiver holding either secret verifies it
        assert len(request.headers["webhook-signature"].split(" ")) == 2
        assert Webhook(new).verify(request.body, request.headers)["type"] == "job.succeeded"
        assert Webhook(old).verify(request.body, request.headers)["type"] == "job.succeeded"


def test_pending_approval_is_announced_and_jobs_without_a_callback_are_not(live: Any, api: Any,
                                                                         submit: Any) -> None:
    secret = _secret(api)
    with receiver() as hook:
        # given a job that waits for a human, and one without a callback_url
        waiting = submit("demo.noop", {}, callback_url=hook.url,
                         constraints={"requires_human_ack": True}).json()["job_id"]
        silent = submit("demo.noop", {}).json()["job_id"]
        wait_status(silent, "succeeded")
        # then the first is announced when it starts waiting
        [request] = hook.wait_for(1)
        event = Webhook(secret).verify(request.body, request.headers)
        assert event["type"] == "job.pending_approval" and event["data"]["job_id"] == waiting
        assert event["data"]["approval_checkpoint"] == "before_execute"
        # and the second has no delivery at all
        assert not Delivery.objects.filter(job_id=silent).exists()
        # when the waiting job is cancelled, that end is announced too
        assert api.post(f"/api/v1/jobs/{waiting}/cancel").status_code == 202
        hook.wait_for(2)
        types = sorted(json.loads(r.body)["type"] for r in hook.requests)
        assert types == ["job.cancelled", "job.pending_approval"]
        assert Job.objects.get(pk=waiting).status == "cancelled"



def _documented_receiver() -> str:
    """The receiver snippet of docs/api.md (the indented block after "A receiver's verification")."""
    text = (ROOT / "docs" / "api.md").read_text()
    lines = text[text.index("A receiver's verification"):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("    import os"))
    block: list[str] = []
    for line in lines[start:]:
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block).strip() + "\n"


def test_the_documented_receiver_verifies_a_real_delivery(live: Any, api: Any, submit: Any,
                                                          monkeypatch: Any) -> None:
    # given the ten lines of docs/api.md, with the secret from /me
    source = _documented_receiver()
    assert len([line for line in source.splitlines() if line.strip()]) == 10
    monkeypatch.setenv("WEBHOOK_SECRET", _secret(api))
    namespace: dict[str, Any] = {}
    exec(compile(source, "docs/api.md", "exec"), namespace)
    with receiver() as hook:
        # when a real delivery arrives
        job_id = submit("demo.noop", {}, callback_url=hook.url).json()["job_id"]
        [request] = hook.wait_for(1)
        # then the snippet accepts it, and refuses it once the body is touched
        assert namespace["receive"](request.body, request.headers) == 204
        assert namespace["receive"](request.body.replace(job_id.encode(), b"job_forged"), request.headers) == 400
