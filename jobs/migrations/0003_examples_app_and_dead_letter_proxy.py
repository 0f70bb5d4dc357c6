"""ExternalRecord leaves the core schema for the examples app (state only: examples 0001 took
the table over), and the dead-letter queue's proxy model moves here from approvals, beside the
replay service its admin calls."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("jobs", "0002_control_fair_share_pause"),
        ("examples", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="ExternalRecord")],
            database_operations=[],
        ),
        migrations.CreateModel(
            name="DeadLetteredJob",
            fields=[],
            options={
                "verbose_name": "dead-lettered job",
                "verbose_name_plural": "dead-letter queue",
                "proxy": True,
                "indexes": [],
                "constraints": [],
            },
            bases=("jobs.job",),
        ),
    ]
