"""Recompute the audit hash chains; exit non-zero naming the first broken link."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.selectors import audit_verify


class Command(BaseCommand):
    help = (
        "Verify every audit chain (or one job's): seq continuity, prev_hash links, recomputed hashes, "
        "and that each job's status matches its last stamp. Exits 1 on the first problem found."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--job", default=None, help="verify only this job id's chain")
        parser.add_argument("--chunk-size", type=int, default=2000, help="rows fetched per round trip")

    def handle(self, *args: Any, **options: Any) -> None:
        report = audit_verify(job_id=options["job"], chunk_size=options["chunk_size"])
        summary = (
            f"chains: {report.chains}  stamps: {report.stamps}  jobs: {report.jobs_checked}  "
            f"broken: {report.broken_total}"
        )
        if report.ok:
            self.stdout.write(f"audit OK  {summary}")
            return
        first = report.broken[0]
        self.stderr.write(
            f"first broken link: job {first.job_id} seq {first.seq} ({first.problem}): "
            f"expected {first.expected!r}, stored {first.stored!r}"
        )
        for link in report.broken[1:]:
            self.stderr.write(f"also broken: {link}")
        self.stdout.write(f"audit FAILED  {summary}")
        raise CommandError(f"audit chain broken at {first.job_id} seq {first.seq}", returncode=1)
