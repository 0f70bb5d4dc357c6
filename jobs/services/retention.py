"""Retention: delete terminal jobs past their time, with their runs, approvals and stamps.

The job rows belong to this app; their stamps leave through the audit app's one sanctioned
path (:func:`audit.services.chains_purge`), which leaves a ``retention_purge`` stamp listing
what went. ``manage.py cleanup`` calls :func:`jobs_purge`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction

from audit.models import AuditStamp
from audit.services import chains_purge, orphan_chains
from jobs.models import TERMINAL_STATUSES, Job


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


def jobs_purge(
    *,
    before: datetime,
    dry_run: bool,
    batch_size: int = 500,
    should_stop: Callable[[], bool] | None = None,
) -> PurgeReport:
    """Delete terminal jobs finished before ``before``, with their runs and stamps.

    Steps, per batch of ``batch_size`` chains, each in one transaction: (1) pick the chains
    (terminal jobs past retention, and job-less refusal chains past retention); (2) lock the
    job rows and re-check them — a dead-lettered job replayed meanwhile is no longer terminal
    and stays; (3) delete the chains through ``chains_purge`` (heads recorded, retention stamp
    appended) and the job rows (runs and approval requests cascade; the effect ledger keeps its
    rows with the job reference cleared). ``dry_run`` only counts. ``should_stop`` is polled
    between batches (SIGTERM from cron stops cleanly after the current batch). Jobs that are
    not terminal — pending approvals included — are never selected.
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
    return report
