"""Recompute the audit hash chains; exit non-zero naming the first broken link.

With ``--export PATH`` it verifies a signed export instead, offline: no database is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.export_verify import export_verify
from audit.selectors import audit_verify
from audit.signing import SigningKeyError, public_key_parse, signing_key_load


class Command(BaseCommand):
    help = (
        "Verify every audit chain (or one job's): seq continuity, prev_hash links, recomputed hashes, "
        "and that each job's status matches its last stamp. Exits 1 on the first problem found. "
        "With --export PATH: verify a signed export offline (signature, hash links, chain continuity)."
    )
    # The export check must run without a database: no system checks that could open one.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--job", default=None, help="verify only this job id's chain")
        parser.add_argument("--chunk-size", type=int, default=2000, help="rows fetched per round trip")
        parser.add_argument("--export", default=None,
                            help="verify this export file (and PATH.sig) offline instead of the database")
        parser.add_argument("--public-key", default=None,
                            help="public key for --export: PEM, the JSON of /api/v1/audit/public-key, or raw "
                                 "base64 (default: derived from AUDIT_SIGNING_KEY_PATH)")
        parser.add_argument("--signature", default=None, help="signature file for --export (default: PATH.sig)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["export"]:
            self._verify_export(options)
            return
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

    def _verify_export(self, options: dict[str, Any]) -> None:
        path = Path(options["export"])
        if not path.is_file():
            raise CommandError(f"no export file at {path}")
        try:
            if options["public_key"]:
                public_key = public_key_parse(Path(options["public_key"]).read_bytes())
            else:
                # Offline, from the key file only; never create a key to verify with.
                public_key = signing_key_load(create=False).public_key()
        except (SigningKeyError, OSError) as exc:
            raise CommandError(f"public key: {exc}; pass --public-key PATH") from None
        signature = Path(options["signature"]) if options["signature"] else None
        report = export_verify(path=path, public_key=public_key, signature_file=signature)
        summary = (f"lines: {report.lines}  stamps: {report.stamps}  chains: {report.chains}  "
                   f"sha256: {report.digest}")
        if report.ok:
            self.stdout.write(f"export OK  {summary}  signed by key {report.verified_with}")
            return
        first = report.first_problem
        lined = [p for p in report.problems if p.line is not None]
        if first is not None and first.line is not None:
            self.stderr.write(f"first bad line: {first}")
        for extra in lined[1:20]:
            self.stderr.write(f"also: {extra}")
        if len(lined) > 20:
            self.stderr.write(f"… and {len(lined) - 20} more")
        if not report.signature_ok:
            self.stderr.write(f"signature: {report.signature_problem}")
        self.stdout.write(f"export FAILED  {summary}")
        if first is not None and first.line is not None:
            raise CommandError(f"export does not verify: {first}", returncode=1)
        raise CommandError(f"export does not verify: {report.signature_problem}", returncode=1)
