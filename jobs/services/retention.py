"""Retention: delete terminal jobs past their time, with their runs, approvals, webhook
deliveries and stamps, and Celery's stored task results of the same age.

The job rows belong to this app; their stamps leave through the audit app's one sanctioned
path (:func:`audit.services.chains_purge`), which leaves a ``retention_purge`` stamp listing
what went. Rows of other apps that hang off a job (runs, approval requests, webhook
deliveries) go with it by cascade. ``manage.py cleanup`` calls :func:`jobs_purge`; the REST
endpoint, the task monitor and the daily beat task call :func:`retention_run`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_celery_results.models import GroupResult, TaskResult

from audit.models import AuditStamp
from audit.services import chains_purge, orphan_chains
from common.errors import DomainError
from jobs.models import TERMINAL_STATUSES, Job

logger = logging.getLogger(__name__)


@dataclass
class PurgeReport:
    before: datetime
    dry_run: bool
    jobs: int = 0
    chains: int = 0
    stamps: int = 0
    batches: int = 0
    stopped: bool = False
    retention_stamps: list[int] = field(default_factory=list)
    # Celery's stored task and group results (django_celery_results) finished before ``before``.
    task_results: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The answer of the REST endpoint and the task monitor: ``would_delete`` (dry run) or
        ``deleted``, the number of jobs, and what else goes with them."""
        body: dict[str, Any] = {"would_delete" if self.dry_run else "deleted": self.jobs, "dry_run": self.dry_run,
                                "before": self.before.isoformat(), "chains": self.chains, "stamps": self.stamps,
                                "task_results": self.task_results}
        if not self.dry_run:
            body.update(batches=self.batches, stopped=self.stopped, retention_stamps=self.retention_stamps)
        return body


def jobs_purge(
    *,
    before: datetime,
    dry_run: bool,
    batch_size: int = 500,
    should_stop: Callable[[], bool] | None = None,
) -> PurgeReport:
    """Delete terminal jobs finished before ``before``, with their runs and stamps, and Celery's
    stored results of the same age.

    Steps, per batch of ``batch_size`` chains, each in one transaction: (1) pick the chains
    (terminal jobs past retention, and job-less refusal chains past retention); (2) lock the
    job rows and re-check them — a dead-lettered job replayed meanwhile is no longer terminal
    and stays; (3) delete the chains through ``chains_purge`` (heads recorded, retention stamp
    appended) and the job rows (runs, approval requests and webhook deliveries cascade; the
    effect ledger keeps its rows with the job reference cleared); (4) after the last batch,
    Celery's stored task and group results finished before ``before``. ``dry_run`` only
    counts. ``should_stop`` is polled between batches (SIGTERM from cron stops cleanly after
    the current batch). Jobs that are not terminal — pending approvals included — are never
    selected.
    """
    jobs = Job.objects.filter(status__in=list(TERMINAL_STATUSES), finished_at__lt=before).order_by("pk")
    job_ids = jobs.values_list("pk", flat=True)
    orphan_ids = orphan_chains(before=before, subject_ids=Job.objects.values("pk"))
    if dry_run:
        report = PurgeReport(before=before, dry_run=True, jobs=job_ids.count())
        report.chains = report.jobs + orphan_ids.count()
        report.stamps = (
            AuditStamp.objects.filter(job_id__in=job_ids).count()
            + AuditStamp.objects.filter(job_id__in=list(orphan_ids)).count()
        )
        report.task_results = _task_results(before).count() + _group_results(before).count()
        return report
    report = PurgeReport(before=before, dry_run=False)
    previous: list[str] = []
    while True:
        if should_stop is not None and should_stop():
            report.stopped = True
            break
        with transaction.atomic():
            # Each batch deletes what it picked, so the next query starts from the top again.
            picked = sorted(set(job_ids[:batch_size]) | set(orphan_ids[:batch_size]))[:batch_size]
            if not picked or picked == previous:
                break
            previous = picked
            locked = set(
                Job.objects.select_for_update()
                .filter(pk__in=picked, status__in=list(TERMINAL_STATUSES), finished_at__lt=before)
                .values_list("pk", flat=True)
            )
            with_rows = set(Job.objects.filter(pk__in=picked).values_list("pk", flat=True))
            ids = [i for i in picked if i in locked or i not in with_rows]
            stamp_count, stamp = chains_purge(chain_ids=ids, before=before, subjects_deleted=len(locked))
            Job.objects.filter(pk__in=locked).delete()
            report.batches += 1
            report.chains += len(ids)
            report.stamps += stamp_count
            report.jobs += len(locked)
            report.retention_stamps.append(stamp.seq)
    if not report.stopped:
        report.task_results = _task_results(before).delete()[0] + _group_results(before).delete()[0]
    return report


def _task_results(before: datetime) -> Any:
    return TaskResult.objects.filter(date_done__lt=before)


def _group_results(before: datetime) -> Any:
    return GroupResult.objects.filter(date_done__lt=before)


def retention_run(*, older_than_days: int, dry_run: bool) -> PurgeReport:
    """Retention of terminal jobs finished more than ``older_than_days`` days ago (0: all
    finished ones); a dry run only counts. The one entry of the REST endpoint, the task
    monitor and the daily beat task."""
    if isinstance(older_than_days, bool) or not isinstance(older_than_days, int) or older_than_days < 0:
        raise DomainError("invalid_request", "older_than_days must be an integer >= 0",
                          errors={"older_than_days": ["must be an integer >= 0"]})
    report = jobs_purge(before=timezone.now() - timedelta(days=older_than_days), dry_run=dry_run)
    if not dry_run:
        logger.info("retention removed %d job(s), %d chain(s), %d stamp(s), %d task result(s) finished before %s",
                    report.jobs, report.chains, report.stamps, report.task_results, report.before.isoformat())
    return report


def retention_scheduled() -> PurgeReport | None:
    """The daily run (beat task ``jobs.retention``): ``JOBS_RETENTION_DAYS``, 0 turns it off."""
    days = settings.JOBS_RETENTION_DAYS
    if days == 0:
        logger.info("retention is off (JOBS_RETENTION_DAYS=0)")
        return None
    return retention_run(older_than_days=days, dry_run=False)
