"""Idempotency request hashes become HMACs under the server's key.

A hash stored before was a plain SHA-256 of the payload, secret fields included: anyone reading
it could confirm a guessed secret offline. Each is rewrapped as
``HMAC(key, "legacy:" + old_hash)`` — the same value ``governance.secrets.legacy_request_hash``
computes from a repeated payload — so a repeat of an old submit still finds its job, and no
stored value can be tested against a guess without the key. Not reversible.
"""

import hashlib
import hmac

from django.conf import settings
from django.db import migrations


def _key() -> bytes:
    # The same derivation as governance.secrets._request_hash_key (kept here: a migration must
    # not change when application code does).
    if settings.JOBS_REQUEST_HASH_KEY:
        return settings.JOBS_REQUEST_HASH_KEY.encode()
    return hashlib.sha256(b"jobplatform request hash\x00" + settings.SECRET_KEY.encode()).digest()


def rewrap(apps, schema_editor):
    Job = apps.get_model("jobs", "Job")
    key = _key()
    batch = []
    for job in Job.objects.exclude(request_hash="").only("pk", "request_hash").iterator(chunk_size=2000):
        job.request_hash = hmac.new(key, b"legacy:" + job.request_hash.encode(), hashlib.sha256).hexdigest()
        batch.append(job)
        if len(batch) >= 2000:
            Job.objects.bulk_update(batch, ["request_hash"])
            batch = []
    if batch:
        Job.objects.bulk_update(batch, ["request_hash"])


class Migration(migrations.Migration):

    dependencies = [
        ("jobs", "0003_examples_app_and_dead_letter_proxy"),
    ]

    operations = [
        migrations.RunPython(rewrap, migrations.RunPython.noop, elidable=True),
    ]
