"""Approval housekeeping on the ``control`` queue."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from approvals.services import approvals_expire, approvals_repair


@shared_task(name="approvals.expire", ignore_result=True, acks_late=False)
def expire() -> int:
    """Beat: cancel jobs whose approval request expired (reason ``expired``)."""
    return approvals_expire(now=timezone.now())


@shared_task(name="approvals.repair", ignore_result=True, acks_late=False)
def repair() -> int:
    """Beat: open the missing request of any job waiting for approval without one."""
    return approvals_repair()
