"""Reads on jobs, scoped to what a principal may see."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, QuerySet

from jobs.models import Job, JobRun, JobStatus


def jobs_visible_to(*, principal: AbstractBaseUser | AnonymousUser) -> QuerySet[Job]:
    """A principal sees its own jobs; staff (operators) see all."""
    qs = Job.objects.all()
    if getattr(principal, "is_staff", False):
        return qs
    return qs.filter(principal_id=principal.pk)


def job_list(
    *, principal: AbstractBaseUser | AnonymousUser, session_id: str | None = None,
    status: str | None = None, job_type: str | None = None,
) -> QuerySet[Job]:
    qs = jobs_visible_to(principal=principal)
    if session_id:
        qs = qs.filter(session_id=session_id)
    if status:
        qs = qs.filter(status=status)
    if job_type:
        qs = qs.filter(job_type=job_type)
    return qs.order_by("-created_at", "-id")


def job_get(*, principal: AbstractBaseUser | AnonymousUser, job_id: str) -> Job | None:
    return jobs_visible_to(principal=principal).filter(pk=job_id).first()


def job_runs(*, job_id: str) -> QuerySet[JobRun]:
    return JobRun.objects.filter(job_id=job_id).order_by("started_at")


def jobs_count_by_status() -> dict[str, int]:
    """How many jobs are in each status now (every status present, zero included); one GROUP BY."""
    counts = dict.fromkeys(JobStatus.values, 0)
    for row in Job.objects.order_by().values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    return counts
