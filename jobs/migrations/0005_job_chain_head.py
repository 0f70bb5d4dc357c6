"""Each job keeps the head of its audit chain (last stamp's seq and hash) on its row.

Existing jobs get the head of the chain they already have, so the next stamp follows it.
"""

from typing import Any

from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def fill_heads(apps: Any, schema_editor: Any) -> None:
    Job = apps.get_model("jobs", "Job")
    AuditStamp = apps.get_model("audit", "AuditStamp")
    if schema_editor.connection.vendor == "postgresql":
        job, stamp = Job._meta.db_table, AuditStamp._meta.db_table
        schema_editor.execute(
            f"UPDATE {job} j SET chain_seq = s.seq, chain_hash = s.hash "
            f"FROM (SELECT DISTINCT ON (job_id) job_id, seq, hash FROM {stamp} ORDER BY job_id, seq DESC) s "
            f"WHERE s.job_id = j.id"
        )
        return
    last = AuditStamp.objects.filter(job_id=OuterRef("pk")).order_by("-seq")
    Job.objects.filter(pk__in=AuditStamp.objects.values("job_id")).update(
        chain_seq=Subquery(last.values("seq")[:1]), chain_hash=Subquery(last.values("hash")[:1])
    )


class Migration(migrations.Migration):

    dependencies = [
        ("jobs", "0004_request_hash_hmac"),
        ("audit", "0002_append_only_trigger"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="chain_seq",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="job",
            name="chain_hash",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
        migrations.RunPython(fill_heads, migrations.RunPython.noop),
    ]
