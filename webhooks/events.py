"""The JSON event a webhook carries, in the Standard Webhooks payload shape
``{"type", "timestamp", "data"}``.

``type`` is ``job.<status>`` (``job.pending_approval``, ``job.succeeded``, ``job.dead_lettered``,
``job.cancelled``, ``job.blocked``). ``data`` holds the job's id, type, status and stage, its
session and trace ids, the result (succeeded) or error class and reason (the other ends), the
approval checkpoint (pending approval) and links to the job, its audit trail and its event
stream. A body above ``WEBHOOK_MAX_BODY_BYTES`` drops the result and says so
(``result_truncated: true``): the receiver reads it at the job's link.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.conf import settings

from jobs.models import Job, JobStatus


def event_type(status: str) -> str:
    return f"job.{status}"


def job_links(job_id: str) -> dict[str, str]:
    base = f"{settings.PLATFORM_PUBLIC_URL}/api/v1/jobs/{job_id}"
    return {"job": base, "audit": f"{base}/audit", "events": f"{base}/events"}


def event_body(payload: dict[str, Any]) -> str:
    """The exact text sent (and signed): compact, keys sorted, so every attempt sends the same."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def event_payload(*, job: Job, status: str, at: datetime) -> dict[str, Any]:
    """The event announcing that ``job`` reached ``status`` at ``at``."""
    data: dict[str, Any] = {
        "job_id": job.pk,
        "job_type": job.job_type,
        "status": status,
        "stage": job.stage,
        "session_id": job.session_id,
        "trace_id": job.trace_id,
        "correlation_id": job.correlation_id,
        "links": job_links(job.pk),
    }
    if status == JobStatus.SUCCEEDED:
        data["result"] = job.result
    elif status == JobStatus.PENDING_APPROVAL:
        data["approval_checkpoint"] = job.approval_checkpoint
    else:
        data["error_class"] = job.error_class
        data["reason"] = job.reason
    payload = {"type": event_type(status), "timestamp": at.isoformat(), "data": data}
    if "result" in data and len(event_body(payload).encode()) > settings.WEBHOOK_MAX_BODY_BYTES:
        del data["result"]
        data["result_truncated"] = True
    return payload
