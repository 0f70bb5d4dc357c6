"""What the audit trail is about, declared by the apps that own it.

Audit is the bottom layer and knows no other app. An app whose rows have a status with a stamp
chain (the jobs app's ``Job``) registers the model here from its ``AppConfig.ready``; the
verifier then checks that each row's status is the one its chain last set, and retention knows
which chains still have a row.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import models


@dataclass(frozen=True)
class Subject:
    model: type[models.Model]
    status_field: str = "status"


_subjects: list[Subject] = []


def subject_register(*, model: type[models.Model], status_field: str = "status") -> None:
    """Declare ``model`` rows as audit subjects: their pk is the chain id (idempotent)."""
    subject = Subject(model=model, status_field=status_field)
    if subject not in _subjects:
        _subjects.append(subject)


def subjects() -> list[Subject]:
    return list(_subjects)
