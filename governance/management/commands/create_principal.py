"""Create (or update) a principal with grants and print its API token."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from governance.services import principal_ensure


class Command(BaseCommand):
    help = ("Create or update a principal (user + API token + webhook signing secret) with the given grants; "
            "prints the token and the secret.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--grant", action="append", default=[], help="grant string, repeatable")
        parser.add_argument("--staff", action="store_true", help="operator: admin access, sees all jobs")
        parser.add_argument("--superuser", action="store_true")
        parser.add_argument("--password", default=None, help="admin login password (optional)")
        parser.add_argument("--token", default=None, help="use this token key instead of a random one")
        parser.add_argument("--quiet", action="store_true", help="print only the token")

    def handle(self, *args: Any, **options: Any) -> None:
        result = principal_ensure(
            username=options["username"],
            grants=options["grant"],
            staff=options["staff"] or options["superuser"],
            superuser=options["superuser"],
            password=options["password"],
            token_key=options["token"],
        )
        if options["quiet"]:
            self.stdout.write(result.token)
            return
        self.stdout.write(f"principal: {result.user.get_username()} ({'created' if result.created else 'updated'})")
        self.stdout.write(f"grants:    {', '.join(sorted(result.grants)) or '(none)'}")
        self.stdout.write(f"token:     {result.token}")
        self.stdout.write(f"webhook secret: {result.webhook_secret}")
