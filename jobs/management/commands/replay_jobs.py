"""Replay dead-lettered jobs from their failed stage: ``manage.py replay_jobs``.

    manage.py replay_jobs --job job_abc --job job_def
    manage.py replay_jobs --reason retries_exhausted --job-type demo.flaky --since 2026-11-01T00:00 --dry-run

A thin loop over ``jobs.services.operations.job_replay`` (the service the admin and the API use);
stamps name the shell operator (``cli:<name>``). Stops cleanly between jobs on SIGTERM.
"""

from __future__ import annotations

import getpass
import signal
from datetime import datetime
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_datetime
from django.utils.timezone import is_naive, make_aware

from common.errors import DomainError
from jobs.models import ErrorClass
from jobs.selectors import dead_lettered_jobs
from jobs.services.operations import job_replay


def _when(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    parsed = parse_datetime(value)
    if parsed is None:
        raise CommandError(f"--{name} must be an ISO date-time, got {value!r}")
    return make_aware(parsed) if is_naive(parsed) else parsed


class Command(BaseCommand):
    help = "Replay dead-lettered jobs (by id, or by reason class / job type / time range)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--job", action="append", default=[], help="job id (repeatable)")
        parser.add_argument("--reason", choices=ErrorClass.values, help="error (reason) class")
        parser.add_argument("--job-type", help="job type name")
        parser.add_argument("--session", help="session id")
        parser.add_argument("--since", help="dead-lettered at or after (ISO date-time, UTC if naive)")
        parser.add_argument("--until", help="dead-lettered before (ISO date-time)")
        parser.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
        parser.add_argument("--actor", default=getpass.getuser(), help="name stamped as cli:<actor>")
        parser.add_argument("--dry-run", action="store_true", help="list what would be replayed")

    def handle(self, *args: Any, **opts: Any) -> None:
        if not (opts["job"] or opts["reason"] or opts["job_type"] or opts["session"] or opts["since"]
                or opts["until"]):
            raise CommandError("give --job, or at least one filter (--reason, --job-type, --session, --since, --until)")
        jobs = list(dead_lettered_jobs(
            job_ids=opts["job"] or None, error_class=opts["reason"], job_type=opts["job_type"],
            session_id=opts["session"], since=_when(opts["since"], "since"), until=_when(opts["until"], "until"),
        )[: opts["limit"]])
        stop = {"now": False}

        def on_term(signum: int, frame: FrameType | None) -> None:
            stop["now"] = True

        signal.signal(signal.SIGTERM, on_term)
        replayed = refused = 0
        for job in jobs:
            if stop["now"]:
                self.stderr.write("SIGTERM: stopping before the next job")
                break
            line = f"{job.pk} {job.job_type} stage={job.stage} reason={job.error_class}"
            if opts["dry_run"]:
                self.stdout.write(f"would replay {line}")
                continue
            try:
                job_replay(job=job, actor=opts["actor"])
            except DomainError as exc:
                refused += 1
                self.stdout.write(f"refused {line}: {exc.code}")
                continue
            replayed += 1
            self.stdout.write(f"replayed {line}")
        missing = sorted(set(opts["job"]) - {j.pk for j in jobs})
        for job_id in missing:
            self.stdout.write(f"skipped {job_id}: not dead-lettered or unknown")
        verb = "would replay" if opts["dry_run"] else "replayed"
        count = len(jobs) if opts["dry_run"] else replayed
        self.stdout.write(f"{verb} {count} job(s); refused {refused}; skipped {len(missing)}"
                          + (" (dry run, nothing changed)" if opts["dry_run"] else ""))
