"""Webhook signing secrets: one per principal, encrypted at rest, shown to its owner, rotatable
with an overlap during which both secrets sign; signatures verify with ``standardwebhooks``."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from governance.models import WebhookSecret
from governance.selectors import webhook_secret_for, webhook_signing_secrets
from webhooks.signing import signature_headers

pytestmark = pytest.mark.django_db


def test_a_principal_gets_one_secret_encrypted_at_rest(make_principal: Any) -> None:
    # given a principal made by the governance service
    first = make_principal("alice")
    # then it has a Standard Webhooks secret, stored encrypted
    assert first.webhook_secret.startswith("whsec_") and len(first.webhook_secret) > 40
    row = WebhookSecret.objects.get(principal=first.user)
    assert first.webhook_secret not in row.secret and first.webhook_secret[6:] not in row.secret
    assert webhook_secret_for(principal=first.user) == first.webhook_secret
    # and ensuring the principal again keeps it
    assert make_principal("alice").webhook_secret == first.webhook_secret


def test_me_shows_the_callers_own_secret(make_principal: Any) -> None:
    # given two principals
    alice, bob = make_principal("alice"), make_principal("bob")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {alice.token}")
    # when alice asks who she is
    body = client.get("/api/v1/me").json()
    # then she sees her own secret, not bob's
    assert (body["principal"], body["webhook_secret"]) == ("alice", alice.webhook_secret)
    assert bob.webhook_secret not in json.dumps(body)
    # and without credentials there is nothing to see
    assert APIClient().get("/api/v1/me").status_code == 401


def test_rotation_keeps_the_old_secret_signing_during_the_overlap(make_principal: Any, settings: Any) -> None:
    # given a principal and its secret
    settings.WEBHOOK_SECRET_OVERLAP_S = 24 * 3600
    alice = make_principal("alice")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {alice.token}")
    # when it rotates
    response = client.post("/api/v1/me/webhook-secret/rotate")
    # then a new secret is shown, and the old one is valid for 24 h more
    assert response.status_code == 200
    new = response.json()["webhook_secret"]
    assert new.startswith("whsec_") and new != alice.webhook_secret
    until = response.json()["previous_valid_until"]
    assert abs((datetime.fromisoformat(until) - timezone.now()) - timedelta(hours=24)) < timedelta(minutes=1)
    assert client.get("/api/v1/me").json()["webhook_secret"] == new
    # and both secrets sign: a receiver holding either verifies the message
    secrets = webhook_signing_secrets(principal_id=alice.user.pk)
    assert secrets == [new, alice.webhook_secret]
    body = json.dumps({"type": "job.succeeded"})
    headers = signature_headers(event_id="msg_1", body=body, secrets=secrets)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(new).verify(body, headers) == {"type": "job.succeeded"}
    assert Webhook(alice.webhook_secret).verify(body, headers) == {"type": "job.succeeded"}
    # when the overlap has passed
    WebhookSecret.objects.filter(principal=alice.user).update(rotated_at=timezone.now() - timedelta(hours=25))
    # then only the new one signs, and the old one no longer verifies
    secrets = webhook_signing_secrets(principal_id=alice.user.pk)
    headers = signature_headers(event_id="msg_2", body=body, secrets=secrets)
    assert secrets == [new]
    Webhook(new).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(alice.webhook_secret).verify(body, headers)


def test_a_signature_covers_id_timestamp_and_body(make_principal: Any) -> None:
    # given a signed message
    secret = make_principal("alice").webhook_secret
    body = '{"a":1}'
    headers = signature_headers(event_id="msg_x", body=body, secrets=[secret])
    # then it is the spec's format
    version, _, signature = headers["webhook-signature"].partition(",")
    assert version == "v1" and len(signature) == 44
    assert headers["webhook-id"] == "msg_x" and headers["webhook-timestamp"].isdigit()
    # and changing any of the three parts breaks it
    for changed in ({**headers, "webhook-id": "msg_y"},
                    {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 1)}):
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(body, changed)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify('{"a":2}', headers)


def test_create_principal_prints_the_secret(db: None) -> None:
    # when an operator creates a principal
    out = io.StringIO()
    call_command("create_principal", "carol", "--grant", "demo:run", stdout=out)
    # then the output names its webhook secret, the same one /me shows
    line = next(ln for ln in out.getvalue().splitlines() if ln.startswith("webhook secret:"))
    secret = line.split(":", 1)[1].strip()
    assert secret.startswith("whsec_")
    assert webhook_secret_for(principal=WebhookSecret.objects.get(principal__username="carol").principal) == secret
