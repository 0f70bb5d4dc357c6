"""Retention: delete terminal jobs (and their runs and audit stamps) older than N days."""

from __future__ import annotations

import signal
from datetime import timedelta
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from audit.services import RETENTION_CHAIN
from jobs.services.retention import jobs_purge


class Command(BaseCommand):
    help = (
        "Delete terminal jobs finished more than --older-than-days ago, with their runs and stamps, "
        f"through the sanctioned retention path; each batch leaves a stamp on the {RETENTION_CHAIN!r} chain."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than-days", type=int, required=True)
        parser.add_argument("--dry-run", action="store_true", help="count only, delete nothing")
        parser.add_argument("--batch-size", type=int, default=500)

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["older_than_days"]
        if days < 0:
            self.stderr.write("--older-than-days must be >= 0")
            raise SystemExit(2)
        stop = {"requested": False}

        def on_term(signum: int, frame: FrameType | None) -> None:
            # Finish the current batch (one transaction), then stop.
            stop["requested"] = True

        previous = signal.signal(signal.SIGTERM, on_term)
        try:
            report = jobs_purge(
                before=timezone.now() - timedelta(days=days),
                dry_run=options["dry_run"],
                batch_size=options["batch_size"],
                should_stop=lambda: stop["requested"],
            )
        finally:
            signal.signal(signal.SIGTERM, previous)
        verb = "would delete" if report.dry_run else "deleted"
        self.stdout.write(
            f"{verb}: {report.jobs} job(s), {report.chains} chain(s), {report.stamps} stamp(s), "
            f"{report.task_results} task result(s) "
            f"older than {report.before.isoformat()}"
            + ("" if report.dry_run else f" in {report.batches} batch(es)")
            + (" (stopped by SIGTERM)" if report.stopped else "")
        )
