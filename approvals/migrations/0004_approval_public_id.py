"""Approval requests get an unguessable public id (``apr_…``), the key of the REST API; the
integer primary key stays for joins and the admin. Existing requests get one each."""

import secrets

from django.db import migrations, models

import approvals.models


def fill(apps, schema_editor):
    ApprovalRequest = apps.get_model("approvals", "ApprovalRequest")
    for request in ApprovalRequest.objects.filter(public_id__isnull=True).only("pk").iterator(chunk_size=1000):
        ApprovalRequest.objects.filter(pk=request.pk).update(public_id="apr_" + secrets.token_urlsafe(18))


class Migration(migrations.Migration):

    dependencies = [
        ("approvals", "0003_dead_letter_proxy_moves_to_jobs"),
    ]

    operations = [
        migrations.AddField(
            model_name="approvalrequest",
            name="public_id",
            field=models.CharField(max_length=40, null=True, editable=False),
        ),
        migrations.RunPython(fill, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="approvalrequest",
            name="public_id",
            field=models.CharField(
                default=approvals.models.new_approval_id, editable=False, max_length=40, unique=True
            ),
        ),
    ]
