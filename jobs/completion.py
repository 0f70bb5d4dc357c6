"""Telling whoever waits that a job reached ``pending_approval`` or a terminal status.

:func:`status_reached` is called by the transition functions (``jobs.transitions``), in the
transaction of the move. It hands the ids to the registered :class:`jobs.hooks.StatusObserver`
add-ons (the ``webhooks`` app records its deliveries there, so an event exists exactly when the
status does).
"""

from __future__ import annotations

from collections.abc import Sequence

from jobs.hooks import status_observers
from jobs.models import TERMINAL_STATUSES, JobStatus

# The statuses somebody waits for: a human (pending approval) or the end.
NOTIFY_STATUSES = frozenset({*TERMINAL_STATUSES, JobStatus.PENDING_APPROVAL})


def status_reached(*, job_ids: Sequence[str], status: str) -> None:
    """``job_ids`` have just moved to ``status`` in the current transaction."""
    if status not in NOTIFY_STATUSES or not job_ids:
        return
    for observer in status_observers():
        observer.reached(job_ids=job_ids, status=status)
