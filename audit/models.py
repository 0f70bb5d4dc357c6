"""Append-only audit stamps, hash-chained per job.

``job_id`` is a plain string, not a foreign key: a refusal for an unknown job id is stamped too,
and stamps outlive the retention of their job rows.
"""

from __future__ import annotations

from django.db import models


class AuditStamp(models.Model):
    job_id = models.CharField(max_length=64)
    seq = models.PositiveIntegerField()
    created_at = models.DateTimeField()
    actor = models.CharField(max_length=200)
    event = models.CharField(max_length=64)
    from_status = models.CharField(max_length=32, blank=True, default="")
    to_status = models.CharField(max_length=32, blank=True, default="")
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64, blank=True, default="")
    hash = models.CharField(max_length=64)

    class Meta:
        ordering = ("job_id", "seq")
        constraints = [
            models.UniqueConstraint(fields=("job_id", "seq"), name="audit_stamp_job_seq_uniq"),
        ]
        indexes = [models.Index(fields=("event", "created_at"), name="audit_event_time_idx")]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.seq} {self.event} {self.from_status}->{self.to_status}"
