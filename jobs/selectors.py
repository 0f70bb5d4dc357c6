"""Reads on jobs, scoped to what a principal may see, and the session summaries control shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, Max, Q, QuerySet
from django.utils import timezone

from jobs.hooks import approval_gate
from jobs.models import TERMINAL_STATUSES, Job, JobRun, JobStatus, PrincipalControl, SessionControl


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


def dead_lettered_jobs(
    *, job_ids: list[str] | None = None, error_class: str | None = None, job_type: str | None = None,
    session_id: str | None = None, since: datetime | None = None, until: datetime | None = None,
) -> QuerySet[Job]:
    """The dead-letter queue, filtered; ``since``/``until`` bound the time it was dead-lettered."""
    qs = Job.objects.filter(status=JobStatus.DEAD_LETTERED)
    if job_ids:
        qs = qs.filter(pk__in=job_ids)
    if error_class:
        qs = qs.filter(error_class=error_class)
    if job_type:
        qs = qs.filter(job_type=job_type)
    if session_id:
        qs = qs.filter(session_id=session_id)
    if since:
        qs = qs.filter(finished_at__gte=since)
    if until:
        qs = qs.filter(finished_at__lt=until)
    return qs.order_by("finished_at", "pk")


def jobs_count_by_status() -> dict[str, int]:
    """How many jobs are in each status now (every status present, zero included); one GROUP BY."""
    counts = dict.fromkeys(JobStatus.values, 0)
    for row in Job.objects.order_by().values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    return counts


# --- sessions: what control acts on -------------------------------------------------------------

# Statuses a "cancel all" acts on, in the order the monitor shows them.
OPEN_STATUSES = (JobStatus.QUEUED, JobStatus.RETRY_SCHEDULED, JobStatus.PENDING_APPROVAL, JobStatus.RUNNING)


@dataclass
class SessionSummary:
    principal_id: int
    principal: str
    session_id: str
    counts: dict[str, int] = field(default_factory=dict)
    pending_approvals: int = 0
    paused: bool = False
    paused_until: datetime | None = None
    max_concurrency: int = 0

    @property
    def open_count(self) -> int:
        return sum(self.counts.get(s, 0) for s in OPEN_STATUSES)

    def as_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "principal": self.principal,
            "principal_id": self.principal_id,
            "counts": {s: self.counts.get(s, 0) for s in JobStatus.values},
            "total": sum(self.counts.values()),
            "open": self.open_count,
            "pending_approvals": self.pending_approvals,
            "paused": self.paused,
            "paused_until": self.paused_until.isoformat() if self.paused_until else None,
            "max_concurrency": self.max_concurrency,
        }


def session_principal_ids(
    *, principal: AbstractBaseUser | AnonymousUser, session_id: str, username: str | None = None
) -> list[int]:
    """The principals whose ``session_id`` the caller may control.

    A principal controls only its own session. Staff control every principal's session of that
    id (or one principal's, by ``username``); with no jobs anywhere, their own.
    """
    if not getattr(principal, "is_staff", False):
        return [int(principal.pk or 0)]
    if username:
        target = get_user_model().objects.filter(username=username).values_list("pk", flat=True).first()
        return [int(target)] if target is not None else []
    ids = sorted(set(Job.objects.filter(session_id=session_id).values_list("principal_id", flat=True)))
    return ids or [int(principal.pk or 0)]


def sessions_summarize(*, keys: list[tuple[int, str]]) -> list[SessionSummary]:
    """Counts by status, pending approvals, pause state and cap for each (principal id, session)."""
    if not keys:
        return []
    principal_ids = sorted({k[0] for k in keys})
    session_ids = sorted({k[1] for k in keys})
    wanted = set(keys)
    names = dict(get_user_model().objects.filter(pk__in=principal_ids).values_list("pk", "username"))
    out = {
        k: SessionSummary(principal_id=k[0], principal=str(names.get(k[0], k[0])), session_id=k[1])
        for k in keys
    }
    for row in (
        Job.objects.filter(principal_id__in=principal_ids, session_id__in=session_ids)
        .values("principal_id", "session_id", "status").annotate(n=Count("id")).order_by()
    ):
        key = (row["principal_id"], row["session_id"])
        if key in wanted:
            out[key].counts[row["status"]] = row["n"]
    pending = approval_gate().pending_by_session(principal_ids=principal_ids, session_ids=session_ids)
    for key, n in pending.items():
        if key in wanted:
            out[key].pending_approvals = n
    defaults = dict(
        PrincipalControl.objects.filter(principal_id__in=principal_ids)
        .values_list("principal_id", "session_max_concurrency")
    )
    controls = {
        (c.principal_id, c.session_id): c
        for c in SessionControl.objects.filter(principal_id__in=principal_ids, session_id__in=session_ids)
    }
    now = timezone.now()
    for key, summary in out.items():
        control = controls.get(key)
        summary.max_concurrency = (
            (control.max_concurrency if control else None)
            or defaults.get(key[0])
            or settings.JOBS_SESSION_MAX_CONCURRENCY
        )
        if control is not None:
            timed = control.paused_until is not None and control.paused_until > now
            summary.paused = control.paused or timed
            summary.paused_until = control.paused_until if timed else None
    return [out[k] for k in keys]


def sessions_active(*, recent_s: float = 24 * 3600, limit: int = 200) -> list[tuple[int, str]]:
    """Sessions worth showing an operator: with unfinished jobs, paused, or active recently."""
    since = timezone.now() - timedelta(seconds=recent_s)
    keys = list(
        Job.objects.filter(~Q(status__in=TERMINAL_STATUSES) | Q(updated_at__gte=since))
        .values_list("principal_id", "session_id").distinct().order_by("principal_id", "session_id")[:limit]
    )
    paused = SessionControl.objects.filter(Q(paused=True) | Q(paused_until__gt=timezone.now()))
    for key in paused.values_list("principal_id", "session_id")[:limit]:
        if key not in keys:
            keys.append(key)
    return [(int(p), str(s)) for p, s in keys]


# --- what waiting requests watch ----------------------------------------------------------------

# A job's state as event streams and waits see it: any change of these wakes them.
LIVE_FIELDS = ("status", "updated_at", "progress_pct", "progress_message")


def jobs_live_state(*, job_ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """``LIVE_FIELDS`` of each existing job in ``job_ids``, in one query."""
    rows = Job.objects.filter(pk__in=job_ids).values_list("pk", *LIVE_FIELDS)
    return {row[0]: tuple(row[1:]) for row in rows}


def principal_sessions(*, principal_id: int, limit: int = 100) -> list[str]:
    """The principal's session ids, most recently used first."""
    rows = (
        Job.objects.filter(principal_id=principal_id).values("session_id")
        .annotate(last=Max("created_at")).order_by("-last", "session_id")[:limit]
    )
    return [row["session_id"] for row in rows]
