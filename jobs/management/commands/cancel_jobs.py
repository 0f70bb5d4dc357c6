"""Cancel a session's unfinished jobs: ``manage.py cancel_jobs --session S [--status queued] [--dry-run]``.

The same service as ``POST /api/v1/jobs/cancel`` (``jobs.services.control.jobs_cancel``): one transaction,
one stamp per job written in bulk. Stamps name the shell operator (``cli:<name>``).
"""

from __future__ import annotations

import getpass
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db.models import Count

from jobs.models import Job
from jobs.selectors import OPEN_STATUSES
from jobs.services.control import jobs_cancel


class Command(BaseCommand):
    help = "Cancel the unfinished jobs of a session: queued ones at once, running ones cooperatively, then forced."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--session", required=True, help="session_id whose jobs to cancel")
        parser.add_argument("--principal", help="only this principal's session (username)")
        parser.add_argument("--status", action="append", choices=[str(s) for s in OPEN_STATUSES],
                            help="only jobs in this status (repeatable)")
        parser.add_argument("--job-type", help="only jobs of this type")
        parser.add_argument("--actor", default=getpass.getuser(), help="name stamped as cli:<actor>")
        parser.add_argument("--dry-run", action="store_true", help="count what would be cancelled, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        jobs = Job.objects.filter(session_id=options["session"])
        if options.get("principal"):
            jobs = jobs.filter(principal__username=options["principal"])
        if options.get("job_type"):
            jobs = jobs.filter(job_type=options["job_type"])
        jobs = jobs.filter(status__in=options.get("status") or OPEN_STATUSES)
        if options["dry_run"]:
            counts = dict(jobs.values_list("status").annotate(n=Count("id")).order_by())
            summary = ", ".join(f"{s}={counts.get(s, 0)}" for s in OPEN_STATUSES)
            self.stdout.write(f"dry run: would cancel {sum(counts.values())} job(s) ({summary})")
            return
        started = time.monotonic()
        result = jobs_cancel(jobs=jobs, actor=f"cli:{options['actor']}", reason="bulk_cancel")
        elapsed = time.monotonic() - started
        self.stdout.write(
            f"cancelled {result.cancelled_count} job(s) at once, asked {len(result.cancelling)} running "
            f"job(s) to stop ({elapsed:.2f}s)"
        )
