"""One row per webhook event: what to send, where, and how its delivery is going.

The row is written in the same transaction as the job's move to the status it announces
(:class:`webhooks.services.DeliveryRecorder`), so an event exists exactly when the status does;
Celery only carries wake-up calls for rows the database says are due.
"""

from __future__ import annotations

import secrets

from django.db import models
from django.db.models import Q
from django.utils import timezone

from jobs.models import Job


def new_event_id() -> str:
    return "msg_" + secrets.token_urlsafe(18)


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"  # waiting for its next attempt (or being attempted)
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # no 2xx within WEBHOOK_RETRY_FOR_S; "deliver again" in the admin
    STOPPED = "stopped"  # the receiver answered 410 Gone, or the target is a forbidden address


class Delivery(models.Model):
    # The Standard Webhooks ``webhook-id``: one per event, the same on every attempt.
    event_id = models.CharField(max_length=64, unique=True, default=new_event_id, editable=False)
    event_type = models.CharField(max_length=64)
    # Retention deletes a job's deliveries with it.
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="webhook_deliveries")
    target = models.URLField(max_length=500)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # Pending: when it may be attempted. While an attempt runs it is pushed past the attempt's
    # longest duration, so a duplicate message finds nothing due and a lost worker's row
    # becomes due again by itself.
    next_attempt_at = models.DateTimeField(default=timezone.now)
    give_up_at = models.DateTimeField()
    published_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_response = models.TextField(blank=True, default="", help_text="the start of the receiver's answer")
    last_error = models.CharField(max_length=300, blank=True, default="")
    last_address = models.CharField(max_length=64, blank=True, default="", help_text="the address connected to")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "deliveries"
        indexes = [
            # The backstop: pending rows in due order.
            models.Index(fields=("next_attempt_at",), condition=Q(status="pending"), name="delivery_due_idx"),
            models.Index(fields=("status", "-created_at"), name="delivery_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_id} {self.event_type} [{self.status}]"
