"""Reads for the MCP server (blocking; called through :func:`mcp_server.db.in_db`).

A task is a job of the requesting principal. Unlike the REST API, where staff see every job,
an MCP session sees only its principal's own jobs: tasks belong to whoever created them.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q

from governance.selectors import missing_permissions, principal_grants
from jobs.models import Job
from jobs.registry import JobType, registry
from jobs.selectors import job_get, job_list

# Jobs submitted over MCP carry an idempotency key with this prefix (session + request id).
MCP_KEY_PREFIX = "mcp:"


class BadCursor(ValueError):
    pass


def task_job(*, principal: AbstractBaseUser, job_id: str) -> Job | None:
    """The principal's own job with this id (None for another principal's, staff included)."""
    job = job_get(principal=principal, job_id=job_id)
    if job is None or job.principal_id != principal.pk:
        return None
    return job


def task_jobs(*, principal: AbstractBaseUser, job_ids: list[str]) -> dict[str, Job]:
    return {
        job.pk: job
        for job in job_list(principal=principal).filter(principal_id=principal.pk, pk__in=job_ids)
    }


def jobs_by_id(*, job_ids: list[str]) -> dict[str, Job]:
    """Jobs by id, whoever owns them (the status notifier: ids it was given by their sessions)."""
    return {job.pk: job for job in Job.objects.filter(pk__in=job_ids)}


def _encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.pk}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, job_id = raw.partition("|")
        when = datetime.fromisoformat(created)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor(cursor) from None
    if not job_id or when.tzinfo is None:
        raise BadCursor(cursor)
    return when, job_id


def task_jobs_page(
    *, principal: AbstractBaseUser, cursor: str | None, page_size: int | None = None
) -> tuple[list[Job], str | None]:
    """One page of the principal's MCP-submitted jobs, newest first, and the next cursor.

    Keyset pagination on (created_at, id): a job created while a client pages through the
    list never shifts a page. Raises :class:`BadCursor` for a cursor this server did not issue.
    """
    size = page_size or int(settings.MCP_LIST_PAGE_SIZE)
    qs = job_list(principal=principal).filter(
        principal_id=principal.pk, idempotency_key__startswith=MCP_KEY_PREFIX
    )
    if cursor:
        created, job_id = _decode_cursor(cursor)
        qs = qs.filter(Q(created_at__lt=created) | Q(created_at=created, pk__lt=job_id))
    rows = list(qs[: size + 1])
    if len(rows) > size:
        return rows[:size], _encode_cursor(rows[size - 1])
    return rows, None


def submittable_job_types(*, principal: AbstractBaseUser) -> list[type[JobType]]:
    """The job types whose required permissions the principal's grants cover, by name."""
    grants = principal_grants(principal=principal)
    return [
        job_type for name, job_type in sorted(registry.all().items())
        if not missing_permissions(required=job_type.permissions, grants=grants)
    ]


def job_stage_count(*, job_type: str) -> int:
    types_by_name = registry.all()
    return len(types_by_name[job_type].stages()) if job_type in types_by_name else 1
