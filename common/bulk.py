"""Inserting many new rows in one statement: ``COPY … FROM STDIN`` on PostgreSQL, ``bulk_create`` elsewhere.

For a thousand rows of a wide table, ``bulk_create`` spends most of its time in Python, preparing
tens of thousands of parameters one field at a time; COPY streams the rows instead (psycopg's
``Cursor.copy``), in the caller's transaction. Meant for models whose instances carry every value
already (primary keys and defaults set in ``__init__``, no ``auto_now``, no save signals): the
values of their concrete fields are written as they are, JSON fields through their encoder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from django.db import models, transaction


def rows_insert(model: type[models.Model], objs: Sequence[models.Model]) -> None:
    """Insert ``objs`` (new instances of ``model``) with one statement."""
    if not objs:
        return
    connection = transaction.get_connection()
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create(objs)
        return
    fields = list(model._meta.concrete_fields)
    table = connection.ops.quote_name(model._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    plan: list[tuple[str, Any]] = [
        (f.attname, f.encoder if isinstance(f, models.JSONField) else False) for f in fields
    ]
    # wrap_database_errors: the raw cursor's errors become Django's (a duplicate key is an
    # IntegrityError, as bulk_create would raise it).
    with (
        connection.wrap_database_errors,
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
    ):
        for obj in objs:
            values = obj.__dict__
            copy.write_row([
                json.dumps(values[name], cls=encoder) if encoder is not False and values[name] is not None
                else values[name]
                for name, encoder in plan
            ])
    db = connection.alias
    for obj in objs:
        obj._state.adding = False
        obj._state.db = db
