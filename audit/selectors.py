from __future__ import annotations

from django.db.models import QuerySet

from audit.models import AuditStamp


def stamps_for_job(*, job_id: str) -> QuerySet[AuditStamp]:
    return AuditStamp.objects.filter(job_id=job_id).order_by("seq")
