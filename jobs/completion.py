"""Telling whoever waits that a job reached ``pending_approval`` or a terminal status.

:func:`status_reached` is called by the transition functions (``jobs.transitions``), in the
transaction of the move:

1. it hands the ids to the registered :class:`jobs.hooks.StatusObserver` add-ons, in that
   transaction (the ``webhooks`` app records its deliveries there, so an event exists exactly
   when the status does);
2. for a terminal status, after commit: the ``job_finished`` signal (``jobs.signals``) for
   in-process listeners, and each job type's ``on_finish`` Celery task, sent ``(job_id,
   status)`` by name to the queue the name routes to. Both are best effort once the move has
   committed: a broker outage at that moment loses the ``on_finish`` message (it is logged);
   the webhook deliveries are the durable channel.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial

from celery import current_app
from django.db import transaction
from kombu.exceptions import OperationalError as KombuOperationalError

from jobs.hooks import status_observers
from jobs.models import TERMINAL_STATUSES, Job, JobStatus
from jobs.registry import registry
from jobs.signals import job_finished

logger = logging.getLogger(__name__)

# The statuses somebody waits for: a human (pending approval) or the end.
NOTIFY_STATUSES = frozenset({*TERMINAL_STATUSES, JobStatus.PENDING_APPROVAL})
# Ids per query when announcing a bulk move.
ANNOUNCE_CHUNK = 2000


def status_reached(*, job_ids: Sequence[str], status: str) -> None:
    """``job_ids`` have just moved to ``status`` in the current transaction."""
    if status not in NOTIFY_STATUSES or not job_ids:
        return
    for observer in status_observers():
        observer.reached(job_ids=job_ids, status=status)
    if status in TERMINAL_STATUSES:
        transaction.on_commit(partial(jobs_finished_announce, job_ids=list(job_ids), status=status))


def on_finish_tasks() -> dict[str, str]:
    """Job type name → its ``on_finish`` task name, for the types that declare one."""
    return {name: cls.on_finish for name, cls in registry.all().items() if cls.on_finish}


def jobs_finished_announce(*, job_ids: list[str], status: str) -> None:
    """After commit: the ``job_finished`` signal and the ``on_finish`` tasks. Never raises."""
    try:
        tasks = on_finish_tasks()
        listening = job_finished.has_listeners(Job)
        if not tasks and not listening:
            return  # nobody to tell: no query at all
        broker_down = False
        for start in range(0, len(job_ids), ANNOUNCE_CHUNK):
            rows = Job.objects.filter(pk__in=job_ids[start:start + ANNOUNCE_CHUNK]).values_list("pk", "job_type")
            for job_id, job_type in rows:
                if listening:
                    for receiver, result in job_finished.send_robust(sender=Job, job_id=job_id, status=status,
                                                                     job_type=job_type):
                        if isinstance(result, Exception):
                            logger.warning("job_finished receiver %r failed for %s", receiver, job_id,
                                           exc_info=result)
                task = tasks.get(job_type)
                if task and not broker_down:
                    broker_down = not _send_on_finish(task, job_id, status)
    except Exception:
        logger.warning("announcing %d finished job(s) failed", len(job_ids), exc_info=True)


def _send_on_finish(task: str, job_id: str, status: str) -> bool:
    """Publish one ``on_finish`` message; False when the broker is unreachable (the rest of the
    batch is skipped rather than each waiting out the publish retry policy)."""
    try:
        current_app.send_task(task, args=[job_id, status])
    except (KombuOperationalError, OSError):
        logger.warning("broker unreachable: on_finish %s for %s (%s) not sent", task, job_id, status, exc_info=True)
        return False
    except Exception:
        logger.warning("on_finish %s for %s (%s) not sent", task, job_id, status, exc_info=True)
    return True
