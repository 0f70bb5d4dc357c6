"""Approval housekeeping on the ``control`` queue."""

from __future__ import annotations

from django.utils import timezone

from approvals.services import approvals_expire
from config.celery import app


@app.task(name="approvals.expire", ignore_result=True, acks_late=False)
def expire() -> int:
    """Beat: cancel jobs whose approval request expired (reason ``expired``)."""
    return approvals_expire(now=timezone.now())
