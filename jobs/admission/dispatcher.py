"""The dispatcher: the database is the truth, Celery carries only admitted work.

``dispatch_ready`` admits ready jobs and publishes them after commit. It runs after every
submit and every stage finish, and on a beat tick as a backstop, so a lost message or a broker
outage delays work but never loses it. Several dispatchers at once are safe: candidate rows are
locked with ``SELECT … FOR UPDATE SKIP LOCKED`` (PostgreSQL; SQLite serialises writers anyway),
and the claim in the worker refuses any duplicate message.

Admission is fair across agent sessions. A session is a principal's ``session_id``; each has an
in-flight cap (``SessionControl.max_concurrency``, else the principal's
``PrincipalControl.session_max_concurrency``, else ``JOBS_SESSION_MAX_CONCURRENCY``) and may be
paused. Within a priority level, sessions with ready work are served round-robin: a session
flooding thousands of jobs gets its cap and no more, and another session's job waits for at most
one free slot.

Steps of one pass:
1. Count in-flight jobs (running, or published within JOBS_REDISPATCH_AFTER_S and not yet
   claimed). Room = JOBS_MAX_IN_FLIGHT − in flight; nothing to do without room.
2. Find the job types that are paused, and the admission budget left of rate-limited ones.
3. Select candidates in one query: ready rows (status ``queued``, ``run_after`` passed, not yet
   published — or published longer than JOBS_REDISPATCH_AFTER_S ago and still unclaimed, the
   message may have died with a broker restart — job type not paused), numbered per session by
   ``ROW_NUMBER() OVER (PARTITION BY principal, session ORDER BY priority DESC, run_after,
   created_at)``; keep rows whose number fits in the session's free slots (cap − its in-flight
   count) of sessions not paused; order by (priority desc, number, run_after, age) — that order
   is the round-robin — and take up to ``min(batch, room)`` after trimming rate-limited types.
   (PostgreSQL reads only each session's first free-slots rows, see ``_CANDIDATES_SQL_PG``;
   SQLite runs the plain window over all ready rows.)
4. Lock those rows (``FOR UPDATE SKIP LOCKED``, re-checking that they are still ready) and mark
   them with ``dispatched_at`` and a fresh random dispatch token in one UPDATE.
5. After commit, publish one message per job to its stage's queue, with the token. A job whose
   publish fails is unmarked, so the next pass publishes it again.
6. (``promote=True``, the beat tick) first move ``retry_scheduled`` jobs whose backoff has
   passed back to ``queued`` (each stamped).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError

from audit.events import Event
from audit.services import ChainHead
from jobs.models import Job, JobRun, JobStatus, JobTypeControl, PrincipalControl, SessionControl
from jobs.transitions import job_transition

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Admitted:
    job_id: str
    stage: str
    token: str
    max_runtime_s: int
    trace_id: str
    scope: str


def stage_queue(stage: str, scope: str) -> str:
    """The queue a stage message goes to: ``<stage>``, or ``<stage>.<scope>`` for a scope that
    has its own workers (``JOBS_SCOPE_QUEUES``)."""
    if scope in settings.JOBS_SCOPE_QUEUES:
        return f"{stage}.{scope}"
    return stage


def publish(admitted: list[Admitted]) -> list[str]:
    """Publish stage messages; return the ids that could not be published."""
    failed: list[str] = []
    grace = settings.JOBS_TIME_LIMIT_GRACE_S
    for index, item in enumerate(admitted):
        try:
            current_app.send_task(
                f"jobs.{item.stage}",
                args=[item.job_id, item.stage, item.token],
                queue=stage_queue(item.stage, item.scope),
                soft_time_limit=item.max_runtime_s,
                time_limit=item.max_runtime_s + grace,
                headers={"trace_id": item.trace_id},
            )
        except (KombuOperationalError, OSError):
            # The broker is unreachable: every further publish would wait out the same retry
            # policy, which inside an HTTP request multiplies the submit's latency by the batch.
            # Give the whole rest of the batch back; the next pass publishes it.
            logger.warning("broker unreachable; %d job(s) stay queued", len(admitted) - index, exc_info=True)
            failed.extend(a.job_id for a in admitted[index:])
            break
        except Exception:
            logger.warning("publish failed for %s; it stays queued", item.job_id, exc_info=True)
            failed.append(item.job_id)
    return failed


def _unmark(admitted: list[Admitted], failed_ids: list[str]) -> None:
    tokens = {a.job_id: a.token for a in admitted}
    for job_id in failed_ids:
        try:
            Job.objects.filter(
                pk=job_id, status=JobStatus.QUEUED, dispatch_token=tokens[job_id]
            ).update(dispatched_at=None)
        except Exception:  # the database may be down too; the redispatch window covers it
            logger.warning("could not unmark %s after failed publish", job_id, exc_info=True)


def promote_due_retries(*, limit: int = 500) -> int:
    """retry_scheduled → queued for jobs whose backoff has passed."""
    now = timezone.now()
    rows = list(
        Job.objects.filter(status=JobStatus.RETRY_SCHEDULED, run_after__lte=now)
        .order_by("run_after")
        .values_list("id", "chain_seq", "chain_hash")[:limit]
    )
    moved = 0
    for job_id, seq, digest in rows:
        if job_transition(
            job_id=job_id,
            to=JobStatus.QUEUED,
            allowed_from=[JobStatus.RETRY_SCHEDULED],
            event=Event.RETRY_DUE,
            updates={"dispatched_at": None},
            head=ChainHead(seq, digest),
        ):
            moved += 1
    return moved


def _in_flight_q(now: datetime) -> Q:
    """Running, or published recently enough that its message is presumed alive.

    A job published longer than JOBS_REDISPATCH_AFTER_S ago and still unclaimed is not counted:
    it is a candidate for redispatch, and counting it would let lost messages fill every slot.
    """
    stale = now - timedelta(seconds=settings.JOBS_REDISPATCH_AFTER_S)
    return Q(status=JobStatus.RUNNING) | Q(status=JobStatus.QUEUED, dispatched_at__gte=stale)


def in_flight_count(now: datetime | None = None) -> int:
    return Job.objects.filter(_in_flight_q(now or timezone.now())).count()


def _type_controls(now: datetime) -> tuple[list[str], dict[str, int]]:
    """(paused job types, remaining admissions of rate-limited job types)."""
    paused: list[str] = []
    budgets: dict[str, int] = {}
    controls = JobTypeControl.objects.filter(
        Q(paused=True) | Q(paused_until__gt=now) | Q(rate_limit__isnull=False)
    ).values("job_type", "paused", "paused_until", "rate_limit", "rate_period_s")
    for c in controls:
        if c["paused"] or (c["paused_until"] is not None and c["paused_until"] > now):
            paused.append(c["job_type"])
        elif c["rate_limit"] is not None:
            since = now - timedelta(seconds=c["rate_period_s"])
            # Admissions in the period: runs started, plus published messages not yet claimed.
            used = JobRun.objects.filter(job__job_type=c["job_type"], started_at__gte=since).count()
            used += Job.objects.filter(
                job_type=c["job_type"], status=JobStatus.QUEUED, dispatched_at__gte=since
            ).count()
            budgets[c["job_type"]] = max(0, c["rate_limit"] - used)
    return paused, budgets


_CANDIDATES_SQL = """
WITH ready AS (
    SELECT j.id, j.principal_id, j.session_id, j.job_type, j.priority, j.run_after, j.created_at,
           ROW_NUMBER() OVER (
               PARTITION BY j.principal_id, j.session_id
               ORDER BY j.priority DESC, j.run_after, j.created_at, j.id
           ) AS rn
    FROM {job} j
    WHERE j.status = %s AND j.run_after <= %s
      AND (j.dispatched_at IS NULL OR j.dispatched_at < %s)
      {type_filter}
),
flight AS (
    SELECT f.principal_id, f.session_id, COUNT(*) AS n
    FROM {job} f
    WHERE f.status = %s OR (f.status = %s AND f.dispatched_at >= %s)
    GROUP BY f.principal_id, f.session_id
)
SELECT r.id, r.job_type
FROM ready r
LEFT JOIN {session} sc ON sc.principal_id = r.principal_id AND sc.session_id = r.session_id
LEFT JOIN {principal} pc ON pc.principal_id = r.principal_id
LEFT JOIN flight fl ON fl.principal_id = r.principal_id AND fl.session_id = r.session_id
WHERE r.rn <= COALESCE(sc.max_concurrency, pc.session_max_concurrency, %s) - COALESCE(fl.n, 0)
  AND (sc.paused IS NULL OR sc.paused = %s)
  AND (sc.paused_until IS NULL OR sc.paused_until <= %s)
ORDER BY r.priority DESC, r.rn, r.run_after, r.created_at, r.id
LIMIT %s
"""


# PostgreSQL: the same selection without reading every ready row. Sessions with queued work are
# found by a loose index scan (a recursive CTE hopping through ``job_fair_share_idx``: one probe
# per session), and each session contributes at most its free slots through a LATERAL
# ``LIMIT``, read in index order. A session flooding thousands of jobs costs a few index probes,
# not a sort of its backlog.
_CANDIDATES_SQL_PG = """
WITH RECURSIVE sessions AS (
    (SELECT j.principal_id, j.session_id FROM {job} j
     WHERE j.status = %s ORDER BY j.principal_id, j.session_id LIMIT 1)
    UNION ALL
    SELECT nxt.principal_id, nxt.session_id FROM sessions s
    CROSS JOIN LATERAL (
        SELECT j.principal_id, j.session_id FROM {job} j
        WHERE j.status = %s AND (j.principal_id, j.session_id) > (s.principal_id, s.session_id)
        ORDER BY j.principal_id, j.session_id LIMIT 1
    ) nxt
),
flight AS (
    SELECT f.principal_id, f.session_id, COUNT(*) AS n
    FROM {job} f
    WHERE f.status = %s OR (f.status = %s AND f.dispatched_at >= %s)
    GROUP BY f.principal_id, f.session_id
),
slots AS (
    SELECT s.principal_id, s.session_id,
           COALESCE(sc.max_concurrency, pc.session_max_concurrency, %s) - COALESCE(fl.n, 0) AS free
    FROM sessions s
    LEFT JOIN {session} sc ON sc.principal_id = s.principal_id AND sc.session_id = s.session_id
    LEFT JOIN {principal} pc ON pc.principal_id = s.principal_id
    LEFT JOIN flight fl ON fl.principal_id = s.principal_id AND fl.session_id = s.session_id
    WHERE (sc.paused IS NULL OR sc.paused = %s)
      AND (sc.paused_until IS NULL OR sc.paused_until <= %s)
)
SELECT c.id, c.job_type
FROM slots sl
CROSS JOIN LATERAL (
    SELECT j.id, j.job_type, j.priority, j.run_after, j.created_at,
           ROW_NUMBER() OVER (ORDER BY j.priority DESC, j.run_after, j.created_at) AS rn
    FROM {job} j
    WHERE j.status = %s AND j.principal_id = sl.principal_id AND j.session_id = sl.session_id
      AND j.run_after <= %s AND (j.dispatched_at IS NULL OR j.dispatched_at < %s)
      {type_filter}
    ORDER BY j.priority DESC, j.run_after, j.created_at
    LIMIT GREATEST(sl.free, 0)
) c
ORDER BY c.priority DESC, c.rn, c.run_after, c.created_at, c.id
LIMIT %s
"""


def admission_candidates(*, now: datetime, limit: int) -> list[str]:
    """Ids of the jobs to admit next, in admission order (steps 2–3 of the module docstring)."""
    stale = now - timedelta(seconds=settings.JOBS_REDISPATCH_AFTER_S)
    paused_types, budgets = _type_controls(now)
    type_filter = ""
    if paused_types:
        type_filter = f"AND j.job_type NOT IN ({', '.join(['%s'] * len(paused_types))})"
    # Rate-limited types may be trimmed below; fetch more so the batch stays full.
    fetch = limit * (1 + len(budgets))
    cap = settings.JOBS_SESSION_MAX_CONCURRENCY
    q, r = JobStatus.QUEUED, JobStatus.RUNNING
    params: list[Any]
    if connection.vendor == "postgresql":
        template = _CANDIDATES_SQL_PG
        params = [q, q, r, q, stale, cap, False, now, q, now, stale, *paused_types, fetch]
    else:
        template = _CANDIDATES_SQL
        params = [q, now, stale, *paused_types, r, q, stale, cap, False, now, fetch]
    sql = template.format(
        job=Job._meta.db_table, session=SessionControl._meta.db_table,
        principal=PrincipalControl._meta.db_table, type_filter=type_filter,
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    ids: list[str] = []
    for job_id, job_type in rows:
        if job_type in budgets:
            if budgets[job_type] <= 0:
                continue
            budgets[job_type] -= 1
        ids.append(job_id)
        if len(ids) >= limit:
            break
    return ids


def dispatch_ready(*, limit: int | None = None, promote: bool = False) -> int:
    """Admit and publish ready jobs; return how many were published."""
    if promote:
        promote_due_retries()
    now = timezone.now()
    batch = limit or settings.JOBS_DISPATCH_BATCH
    admitted: list[Admitted] = []
    with transaction.atomic():
        room = settings.JOBS_MAX_IN_FLIGHT - in_flight_count(now)
        if room <= 0:
            return 0
        ids = admission_candidates(now=now, limit=min(batch, room))
        if not ids:
            return 0
        stale = now - timedelta(seconds=settings.JOBS_REDISPATCH_AFTER_S)
        # Lock and re-check: another dispatcher may hold or have just published some of them.
        locked = {
            r["id"]: r
            for r in Job.objects.select_for_update(skip_locked=True)
            .filter(pk__in=ids, status=JobStatus.QUEUED, run_after__lte=now)
            .filter(Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=stale))
            .values("id", "stage", "max_runtime_s", "trace_id", "scope")
        }
        rows = [locked[i] for i in ids if i in locked]
        if not rows:
            return 0
        token = secrets.token_urlsafe(16)
        Job.objects.filter(pk__in=[r["id"] for r in rows], status=JobStatus.QUEUED).update(
            dispatched_at=now, dispatch_token=token
        )
        admitted = [
            Admitted(r["id"], r["stage"], token, r["max_runtime_s"], r["trace_id"], r["scope"])
            for r in rows
        ]

        def _after_commit() -> None:
            failed = publish(admitted)
            if failed:
                _unmark(admitted, failed)

        transaction.on_commit(_after_commit)
    return len(admitted)


def dispatch_soon() -> None:
    """Run a dispatch pass after the current transaction commits (or now, outside one).

    Errors are logged, never raised: the beat tick is the backstop.
    """

    def _run() -> None:
        try:
            dispatch_ready()
        except Exception:
            logger.warning("dispatch after commit failed; the beat tick will retry", exc_info=True)

    transaction.on_commit(_run)
