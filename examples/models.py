"""The local "external system" the example job types write to."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class ExternalRecord(models.Model):
    """A small local "external system" the example job types write to.

    It stands in for a CRM or CMS: the example with a commit stage writes here only in
    ``commit``, so tests can count effects exactly.
    """

    key = models.CharField(max_length=200)
    data = models.JSONField(default=dict)
    written_by_job = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=("key",), name="external_key_idx")]

    def __str__(self) -> str:
        return f"{self.key} ({self.pk})"
