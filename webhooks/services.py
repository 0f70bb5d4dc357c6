"""Webhook deliveries: recorded with the transition, attempted by the ``delivery`` queue.

The database is the truth; Celery messages are wake-up calls:

1. **Record** (:func:`deliveries_record`, the :class:`jobs.hooks.StatusObserver` this app
   registers): when jobs reach ``pending_approval`` or a terminal status, one ``Delivery`` row
   per job that has a ``callback_url``, in the transaction of the move. After commit the first
   ``WEBHOOK_PUBLISH_AT_ONCE`` of them are published to the ``delivery`` queue.
2. **Attempt** (:func:`delivery_attempt`, task ``webhooks.deliver``): claim the row with a
   guarded UPDATE (pending and due → attempt counted, ``next_attempt_at`` pushed past the
   attempt's longest duration, so a duplicate message finds nothing due), sign the body with
   the principal's secrets, POST it (``webhooks.sender``), and write the outcome guarded on the
   attempt number: 2xx → ``delivered``; 410 → ``stopped``; anything else → due again after
   exponential backoff with jitter, or ``failed`` once the next attempt would fall after
   ``give_up_at`` (``WEBHOOK_RETRY_FOR_S`` after the event).
3. **Backstop** (:func:`deliveries_publish_due`, beat task ``webhooks.deliver_due`` every
   ``WEBHOOK_TICK_S``): publish every pending row that is due and not published in the last
   ``WEBHOOK_REPUBLISH_AFTER_S`` — retries, rows past the at-once batch, lost messages, and
   rows whose worker died mid-attempt.
4. **Deliver again** (:func:`deliveries_redeliver`, the admin action): a ``failed`` or
   ``stopped`` row becomes pending with a fresh retry window, same event id.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from datetime import timedelta
from functools import partial

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError

from governance.selectors import webhook_signing_secrets
from governance.services import webhook_secret_ensure
from jobs.metrics import webhook_attempted
from jobs.models import Job
from webhooks.events import event_body, event_payload, event_type
from webhooks.models import Delivery, DeliveryStatus
from webhooks.sender import SendResult, post_json
from webhooks.signing import signature_headers

logger = logging.getLogger(__name__)

DELIVER_TASK = "webhooks.deliver"
# Ids per query when recording for a bulk move.
RECORD_CHUNK = 2000
# Clocks of the web and worker hosts may differ a little; a row made "due now" on one must be
# due on the other.
CLOCK_SKEW = timedelta(seconds=1)
JITTER = 0.25


class DeliveryRecorder:
    """The observer this app registers in ``jobs.hooks`` (see ``WebhooksConfig.ready``)."""

    def reached(self, *, job_ids: Sequence[str], status: str) -> None:
        deliveries_record(job_ids=job_ids, status=status)


def deliveries_record(*, job_ids: Sequence[str], status: str) -> list[str]:
    """One delivery per job with a ``callback_url``, in the caller's transaction; return the
    event ids. The first ``WEBHOOK_PUBLISH_AT_ONCE`` are published after commit."""
    now = timezone.now()
    give_up = now + timedelta(seconds=settings.WEBHOOK_RETRY_FOR_S)
    rows: list[Delivery] = []
    ids = list(job_ids)
    for start in range(0, len(ids), RECORD_CHUNK):
        for job in Job.objects.filter(pk__in=ids[start:start + RECORD_CHUNK]).exclude(callback_url=""):
            publish_now = len(rows) < settings.WEBHOOK_PUBLISH_AT_ONCE
            rows.append(Delivery(
                event_type=event_type(status), job=job, target=job.callback_url,
                payload=event_payload(job=job, status=status, at=now), next_attempt_at=now, give_up_at=give_up,
                published_at=now if publish_now else None, created_at=now,
            ))
    if not rows:
        return []
    Delivery.objects.bulk_create(rows)
    at_once = [row.event_id for row in rows if row.published_at is not None]
    if at_once:
        transaction.on_commit(partial(deliveries_publish, at_once))
    return [row.event_id for row in rows]


def deliveries_publish(event_ids: list[str]) -> int:
    """Publish one ``webhooks.deliver`` message per event; return how many went out. A row
    whose publish failed is unmarked, so the next tick publishes it. Never raises."""
    for index, event_id in enumerate(event_ids):
        try:
            current_app.send_task(DELIVER_TASK, args=[event_id])
        except (KombuOperationalError, OSError):
            # The broker is away: the rest would wait out the same retry policy each.
            rest = event_ids[index:]
            logger.warning("broker unreachable; %d webhook delivery(ies) wait for the tick", len(rest), exc_info=True)
            _unmark(rest)
            return index
        except Exception:
            logger.warning("publish failed for delivery %s", event_id, exc_info=True)
            _unmark([event_id])
    return len(event_ids)


def _unmark(event_ids: list[str]) -> None:
    try:
        Delivery.objects.filter(event_id__in=event_ids, status=DeliveryStatus.PENDING).update(published_at=None)
    except Exception:  # the database may be away too; the republish window covers it
        logger.warning("could not unmark %d delivery(ies)", len(event_ids), exc_info=True)


def deliveries_publish_due(*, limit: int = 500) -> int:
    """The backstop: publish pending deliveries that are due and not recently published."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.WEBHOOK_REPUBLISH_AFTER_S)
    with transaction.atomic():
        event_ids = list(
            Delivery.objects.select_for_update(skip_locked=True)
            .filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
            .filter(Q(published_at__isnull=True) | Q(published_at__lt=stale))
            .order_by("next_attempt_at")
            .values_list("event_id", flat=True)[:limit]
        )
        if not event_ids:
            return 0
        Delivery.objects.filter(event_id__in=event_ids).update(published_at=now)
        transaction.on_commit(partial(deliveries_publish, event_ids))
    return len(event_ids)


def backoff_s(attempt: int, rng: random.Random | None = None) -> float:
    """Delay after failed attempt ``attempt`` (1-based): exponential, capped, with jitter."""
    base = min(settings.WEBHOOK_BACKOFF_MAX_S, settings.WEBHOOK_BACKOFF_BASE_S * (2 ** max(0, attempt - 1)))
    return max(0.0, base * (1 + (rng or random).uniform(-JITTER, JITTER)))


def _attempt_lease_s() -> float:
    # Past the longest an attempt can take (the sender's hard deadline) plus writing its outcome.
    return settings.WEBHOOK_TIMEOUT_S + 30.0


def delivery_attempt(*, event_id: str) -> str:
    """Attempt one delivery if it is pending and due; return what happened.

    Steps: (1) claim — guarded UPDATE (pending, due) counting the attempt and pushing
    ``next_attempt_at`` past its longest duration; nothing matched → ``not_due`` (a duplicate
    message, or someone else is at it); (2) sign the body with every current secret of the
    job's principal (made now if it has none); (3) POST it; (4) write the outcome, guarded on
    this attempt's number.
    """
    now = timezone.now()
    claimed = Delivery.objects.filter(
        event_id=event_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now + CLOCK_SKEW
    ).update(attempts=F("attempts") + 1, next_attempt_at=now + timedelta(seconds=_attempt_lease_s()),
             last_attempt_at=now, published_at=None)
    if not claimed:
        return "not_due"
    delivery = Delivery.objects.get(event_id=event_id)
    principal_id = Job.objects.filter(pk=delivery.job_id).values_list("principal_id", flat=True).get()
    secrets = webhook_signing_secrets(principal_id=principal_id) or [webhook_secret_ensure(principal_id=principal_id)]
    body = event_body(delivery.payload)
    headers = signature_headers(event_id=event_id, body=body, secrets=secrets)
    result = post_json(
        url=delivery.target, body=body.encode(), headers=headers,
        connect_timeout=settings.WEBHOOK_CONNECT_TIMEOUT_S, total_timeout=settings.WEBHOOK_TIMEOUT_S,
        snippet_bytes=settings.WEBHOOK_RESPONSE_SNIPPET_BYTES,
    )
    return _record_outcome(delivery, result)


def _record_outcome(delivery: Delivery, result: SendResult) -> str:
    now = timezone.now()
    fields: dict[str, object] = {
        "last_http_status": result.http_status,
        "last_response": result.snippet,
        "last_error": result.error[:300],
        "last_address": result.address[:64],
    }
    status = result.http_status
    if status is not None and 200 <= status < 300:
        outcome = DeliveryStatus.DELIVERED
    elif status == 410 or result.forbidden:
        outcome = DeliveryStatus.STOPPED
    else:
        next_at = now + timedelta(seconds=backoff_s(delivery.attempts))
        outcome = DeliveryStatus.FAILED if next_at > delivery.give_up_at else DeliveryStatus.PENDING
        fields["next_attempt_at"] = next_at
    fields["status"] = outcome
    if outcome != DeliveryStatus.PENDING:
        fields["finished_at"] = now
    Delivery.objects.filter(
        pk=delivery.pk, status=DeliveryStatus.PENDING, attempts=delivery.attempts
    ).update(**fields)
    webhook_attempted(outcome=str(outcome))
    log = logger.info if outcome in (DeliveryStatus.DELIVERED, DeliveryStatus.PENDING) else logger.warning
    log("webhook %s attempt %d to %s: %s (%s)", delivery.event_id, delivery.attempts, delivery.target,
        status if status is not None else result.error, outcome)
    return str(outcome)


def deliveries_redeliver(*, deliveries: QuerySet[Delivery], actor: str) -> int:
    """Failed or stopped deliveries → pending with a fresh retry window (same event id),
    published after commit; return how many."""
    now = timezone.now()
    with transaction.atomic():
        event_ids = list(
            deliveries.filter(status__in=[DeliveryStatus.FAILED, DeliveryStatus.STOPPED])
            .select_for_update().values_list("event_id", flat=True)
        )
        if not event_ids:
            return 0
        Delivery.objects.filter(event_id__in=event_ids).update(
            status=DeliveryStatus.PENDING, next_attempt_at=now, published_at=now, finished_at=None,
            give_up_at=now + timedelta(seconds=settings.WEBHOOK_RETRY_FOR_S),
        )
        transaction.on_commit(partial(deliveries_publish, event_ids))
    logger.info("%s: deliver again %d webhook delivery(ies)", actor, len(event_ids))
    return len(event_ids)

