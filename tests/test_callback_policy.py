"""No SSRF: callback URLs must be http(s) to public addresses, checked at submit and again at
send time against the address connected to, unless allowed by WEBHOOK_ALLOWED_NETWORKS."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from governance.egress import address_refusal
from jobs.models import Job
from jobs.services.control import jobs_cancel
from jobs.services.submit import SubmitSpec, job_submit
from tests.webhook_receiver import receiver
from webhooks.models import Delivery, DeliveryStatus
from webhooks.services import delivery_attempt

pytestmark = pytest.mark.django_db

REFUSED_ALWAYS = [
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
    "http://10.1.2.3/hook",
    "http://192.168.0.10/hook",
    "http://[fd00::1]/hook",
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",
    "http://100.64.0.1/hook",  # shared address space, not globally routable
    "ftp://93.184.216.34/hook",
    "file:///etc/passwd",
    "http://user:pw@93.184.216.34/hook",
]
LOOPBACK = ["http://127.0.0.1:8000/hook", "http://localhost/hook", "http://[::1]/hook",
            "http://[::ffff:127.0.0.1]/hook", "http://127.9.9.9/hook"]


def _submit(api: Any, url: str) -> Any:
    return api.post("/api/v1/jobs", {"job_type": "demo.noop", "inputs": {}, "session_id": "s-ssrf",
                                     "callback_url": url}, format="json")


@pytest.mark.parametrize("url", REFUSED_ALWAYS + LOOPBACK)
def test_forbidden_targets_are_refused_at_submit(api: Any, url: str, settings: Any) -> None:
    # given no allow-list
    settings.WEBHOOK_ALLOWED_NETWORKS = []
    # when a job names the target as its callback
    response = _submit(api, url)
    # then it is refused, and nothing is recorded (the serializer refuses what is not a URL at all)
    assert response.status_code == 400
    assert response.json()["code"] in {"callback_url_forbidden", "invalid_request"}
    if url.startswith(("http://", "ftp://")):
        assert response.json()["code"] == "callback_url_forbidden", response.json()
    assert not Job.objects.exists()


def test_the_allow_list_opens_loopback_and_nothing_else(api: Any, settings: Any) -> None:
    # given loopback on the allow-list
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    # then a loopback callback is accepted, and the metadata address still refused
    assert _submit(api, "http://127.0.0.1:8000/hook").status_code == 202
    refused = _submit(api, "http://169.254.169.254/latest/meta-data/").json()
    assert refused["code"] == "callback_url_forbidden"
    assert "169.254.169.254" in refused["detail"] and "link-local" in refused["detail"]
    assert refused["errors"]["callback_url"]
    assert Job.objects.count() == 1


def test_the_policy_on_addresses(settings: Any) -> None:
    settings.WEBHOOK_ALLOWED_NETWORKS = []
    assert address_refusal("93.184.216.34") is None
    assert address_refusal("2606:4700:4700::1111") is None
    assert address_refusal("169.254.169.254") == "link-local"
    assert address_refusal("127.0.0.1") == "loopback"
    assert address_refusal("::1") == "loopback"
    assert address_refusal("::ffff:10.0.0.1") == "private"
    assert address_refusal("ff02::1") == "multicast"
    assert address_refusal("240.0.0.1") is not None
    assert address_refusal("fe80::1%eth0") == "link-local"
    settings.WEBHOOK_ALLOWED_NETWORKS = ["10.20.0.0/16"]
    assert address_refusal("10.20.3.4") is None
    assert address_refusal("10.21.0.1") == "private"


def test_send_time_checks_the_address_it_connects_to(principal: Any, settings: Any) -> None:
    with receiver() as hook:
        # given a delivery to loopback recorded while loopback was allowed
        settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
        spec = SubmitSpec(job_type="demo.noop", inputs={}, session_id="s-rebind", callback_url=hook.url,
                          run_after=timezone.now() + timedelta(hours=1))
        job = job_submit(principal=principal.user, spec=spec).job
        jobs_cancel(jobs=Job.objects.filter(pk=job.pk), actor="test")
        row = Delivery.objects.get(job=job)
        # when the name now leads somewhere forbidden (here: the allow-list is gone)
        settings.WEBHOOK_ALLOWED_NETWORKS = []
        outcome = delivery_attempt(event_id=row.event_id)
        # then nothing is sent, and the delivery stops rather than retrying
        assert outcome == DeliveryStatus.STOPPED and hook.requests == []
        row.refresh_from_db()
        assert "forbidden address 127.0.0.1 (loopback)" in row.last_error
        assert row.last_http_status is None and row.finished_at is not None
