"""Write a signed audit export: JSON lines of stamps in chain order, a manifest, PATH.sig."""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_date, parse_datetime

from audit.export import audit_export
from audit.signing import SigningKeyError


def parse_since(value: str) -> datetime:
    """An ISO 8601 time (``2026-11-01T00:00:00Z``) or date (``2026-11-01``, midnight UTC)."""
    when = parse_datetime(value)
    if when is None:
        day = parse_date(value)
        if day is None:
            raise CommandError(f"--since {value!r} is not an ISO 8601 date or time")
        when = datetime(day.year, day.month, day.day)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = (
        "Export audit stamps as JSON lines in chain order with a manifest (last line) and a detached "
        "Ed25519 signature (PATH.sig) over the file's SHA-256; verify with verify_audit --export PATH."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", required=True, help="the export file to write (PATH; PATH.sig beside it)")
        parser.add_argument("--since", default=None,
                            help="only chains' stamps from their first stamp at or after this time (ISO 8601)")
        parser.add_argument("--job", default=None, help="only this job id's chain")
        parser.add_argument("--chunk-size", type=int, default=2000, help="rows fetched per round trip")

    def handle(self, *args: Any, **options: Any) -> None:
        since = parse_since(options["since"]) if options["since"] else None

        def on_term(signum: int, frame: FrameType | None) -> None:
            # Unwind so the partial files are removed; nothing is left that looks complete.
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, on_term)
        try:
            summary = audit_export(out=Path(options["out"]), since=since, job_id=options["job"],
                                   chunk_size=options["chunk_size"])
        except SigningKeyError as exc:
            raise CommandError(f"signing key: {exc}") from None
        except KeyboardInterrupt:
            raise CommandError("interrupted; no export written", returncode=130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        self.stdout.write(
            f"exported {summary.stamps} stamp(s) in {summary.chains} chain(s) to {summary.path}\n"
            f"sha256 {summary.digest}\n"
            f"signature {summary.signature_path} (ed25519, key {summary.key_id})"
        )
