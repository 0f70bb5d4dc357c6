"""Celery tasks of the webhooks app. Thin: each calls a service.

``webhooks.deliver`` runs on the ``delivery`` queue, so slow receivers never hold a slot of the
job queues; ``webhooks.deliver_due`` is the beat backstop (``control`` queue).
"""

from __future__ import annotations

from celery import shared_task

from webhooks.services import deliveries_publish_due, delivery_attempt


@shared_task(name="webhooks.deliver", ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def deliver(event_id: str) -> str:
    """One attempt of one delivery (a duplicate or early message finds nothing due)."""
    return delivery_attempt(event_id=str(event_id))


@shared_task(name="webhooks.deliver_due", ignore_result=True, acks_late=False)
def deliver_due() -> int:
    """Beat: publish deliveries that are due (retries, lost messages, the rest of a bulk)."""
    return deliveries_publish_due()
