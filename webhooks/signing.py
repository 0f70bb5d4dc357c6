"""Standard Webhooks signatures (https://www.standardwebhooks.com/), made with the
``standardwebhooks`` package so that a receiver using it verifies what we send.

Headers of one attempt: ``webhook-id`` (the event's id, the same on every retry),
``webhook-timestamp`` (unix seconds of this attempt) and ``webhook-signature``: one
``v1,<base64 HMAC-SHA256 over "{id}.{timestamp}.{body}">`` per signing secret, space-separated —
two during the overlap after a rotation, and a receiver accepts the message if any one matches.
"""

from __future__ import annotations

from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook


def signature_headers(*, event_id: str, body: str, secrets: list[str], at: datetime | None = None) -> dict[str, str]:
    """The three signature headers for ``body`` sent as ``event_id`` at ``at`` (default: now)."""
    if not secrets:
        raise ValueError("at least one signing secret is needed")
    # Whole seconds, in UTC: the header carries the same integer the signature covers.
    moment = (at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    signatures = [Webhook(secret).sign(msg_id=event_id, timestamp=moment, data=body) for secret in secrets]
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": " ".join(signatures),
    }
