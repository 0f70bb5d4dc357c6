"""PostgreSQL refuses UPDATE and DELETE on audit stamps.

The only exception is the sanctioned retention path (audit.services.chains_purge), which sets the
transaction-local flag ``audit.retention = 'on'`` and leaves its own stamp. On SQLite (the
embedded first-run default) there is no such trigger; docs/governance.md says so.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION audit_stamp_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('audit.retention', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit stamps are append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS audit_stamp_append_only ON audit_auditstamp;
CREATE TRIGGER audit_stamp_append_only
    BEFORE UPDATE OR DELETE ON audit_auditstamp
    FOR EACH ROW EXECUTE FUNCTION audit_stamp_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS audit_stamp_append_only ON audit_auditstamp;
DROP FUNCTION IF EXISTS audit_stamp_append_only();
"""


def forwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(CREATE)


def backwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
