"""Revoke grants from a principal; jobs already queued under them stop at the worker's re-check."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from governance.services import grant_revoke


class Command(BaseCommand):
    help = "Revoke grants from a principal (its own grants; group grants are edited in the admin)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--grant", action="append", required=True, help="grant string, repeatable")

    def handle(self, *args: Any, **options: Any) -> None:
        revoked = grant_revoke(username=options["username"], permissions=options["grant"])
        if not revoked:
            raise CommandError(f"{options['username']} holds none of: {', '.join(options['grant'])}")
        self.stdout.write(f"revoked: {', '.join(revoked)}")
