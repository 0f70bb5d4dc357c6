"""The governance version row: its token changes with every change to rules, grants or groups."""

import secrets
from typing import Any

import django.utils.timezone
from django.db import migrations, models


def create_row(apps: Any, schema_editor: Any) -> None:
    apps.get_model("governance", "GovernanceVersion").objects.get_or_create(
        id=1, defaults={"token": secrets.token_hex(16)}
    )


class Migration(migrations.Migration):

    dependencies = [
        ("governance", "0002_webhook_secret"),
    ]

    operations = [
        migrations.CreateModel(
            name="GovernanceVersion",
            fields=[
                ("id", models.PositiveSmallIntegerField(default=1, primary_key=True, serialize=False)),
                ("token", models.CharField(max_length=32)),
                ("changed_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
        ),
        migrations.RunPython(create_row, migrations.RunPython.noop),
    ]
