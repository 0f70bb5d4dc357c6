"""The dispatcher: the database is the truth, Celery carries only admitted work.

``dispatch_ready`` is one admission pass: it admits ready jobs and publishes them after commit.
``dispatch_soon`` asks for a pass after the current transaction (submit, stage finish, cancel,
approval, resume…) and the beat tick runs one as the backstop, so a lost message or a broker
outage delays work but never loses it. Rows are locked with ``FOR UPDATE SKIP LOCKED``
(PostgreSQL; SQLite serialises writers anyway) and the claim in the worker refuses any
duplicate message, so even concurrent passes would be safe.

Passes are coalesced and admitted in batches (``dispatch_soon`` → :func:`dispatch_kick`):

- Fair share decides at the last moment. At most ``JOBS_MAX_UNCLAIMED`` jobs are published and
  not yet claimed (about what the workers can take next), so the broker never holds a long
  FIFO that priority and round-robin could not reorder; the rest wait in the database, where
  the next pass picks them in fair order.
- A request is cheap: one count of in-flight and unclaimed jobs. A pass runs only when there is
  room and at least half of ``JOBS_MAX_UNCLAIMED`` is free; above that the workers still have
  messages waiting and a later finish asks again. Under load a finishing worker thus refills the
  buffer every few jobs instead of running the fair-share query after each one.
- At most one pass runs at a time across the cluster, and at most one more waits: PostgreSQL
  advisory locks ``RUN`` and ``NEXT``. A request that gets ``NEXT`` waits for ``RUN``, releases
  ``NEXT`` and runs the pass; a request that cannot get ``NEXT`` returns at once, because the
  waiting pass starts after its commit and will see its job. Publishing happens after ``RUN``
  is released. (SQLite: every request runs its pass.)

Admission is fair across agent sessions. A session is a principal's ``session_id``; each has an
in-flight cap (``SessionControl.max_concurrency``, else the principal's
``PrincipalControl.session_max_concurrency``, else ``JOBS_SESSION_MAX_CONCURRENCY``) and may be
paused. Within a priority level, sessions with ready work are served round-robin: a session
flooding thousands of jobs gets its cap and no more, and another session's job waits for at most
one free slot.

Steps of one pass:
1. Count in-flight jobs (running, or published within JOBS_REDISPATCH_AFTER_S and not yet
   claimed) and unclaimed ones (published within JOBS_UNCLAIMED_STALE_S, not yet claimed).
   Room = the smaller of JOBS_MAX_IN_FLIGHT − in flight and JOBS_MAX_UNCLAIMED − unclaimed;
   nothing to do without room.
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
   them with ``dispatched_at`` and a fresh random dispatch token (one statement on PostgreSQL).
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
from django.db.models import Count, Q
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


@dataclass(frozen=True)
class Room:
    """Free admission slots: under ``JOBS_MAX_IN_FLIGHT`` and under ``JOBS_MAX_UNCLAIMED``."""

    in_flight: int
    unclaimed: int

    @property
    def free(self) -> int:
        return min(settings.JOBS_MAX_IN_FLIGHT - self.in_flight, settings.JOBS_MAX_UNCLAIMED - self.unclaimed)

    @property
    def worth_a_pass(self) -> bool:
        """A requested pass is worth running: there is room, and at least half the unclaimed
        buffer is empty. Above that the workers still have messages waiting, and a later
        finish asks again."""
        refill = max(1, settings.JOBS_MAX_UNCLAIMED // 2)
        return self.free >= 1 and settings.JOBS_MAX_UNCLAIMED - self.unclaimed >= refill


def room_now(now: datetime | None = None) -> Room:
    """In-flight and recently published unclaimed jobs, in one indexed count."""
    now = now or timezone.now()
    recent = now - timedelta(seconds=settings.JOBS_UNCLAIMED_STALE_S)
    counts = Job.objects.filter(_in_flight_q(now)).aggregate(
        in_flight=Count("pk"),
        unclaimed=Count("pk", filter=Q(status=JobStatus.QUEUED, dispatched_at__gte=recent)),
    )
    return Room(in_flight=counts["in_flight"] or 0, unclaimed=counts["unclaimed"] or 0)


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
# not a sort of its backlog. The hops order by every column of the partial index (not only
# principal and session): only that index yields this order, so the plan cannot drift to
# ``job_api_idx`` — which holds every status and would make each hop walk past the finished jobs
# of sessions with nothing queued — when statistics are stale (a bulk load, a TRUNCATE).
_CANDIDATES_SQL_PG = """
WITH RECURSIVE sessions AS (
    (SELECT j.principal_id, j.session_id FROM {job} j
     WHERE j.status = %s
     ORDER BY j.principal_id, j.session_id, j.priority DESC, j.run_after, j.created_at LIMIT 1)
    UNION ALL
    SELECT nxt.principal_id, nxt.session_id FROM sessions s
    CROSS JOIN LATERAL (
        SELECT j.principal_id, j.session_id FROM {job} j
        WHERE j.status = %s AND (j.principal_id, j.session_id) > (s.principal_id, s.session_id)
        ORDER BY j.principal_id, j.session_id, j.priority DESC, j.run_after, j.created_at LIMIT 1
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


# PostgreSQL: lock the candidates that are still ready (another pass may hold or have just
# published some) and mark them, in one statement.
_MARK_SQL_PG = """
UPDATE {job} SET dispatched_at = %s, dispatch_token = %s
WHERE id IN (
    SELECT id FROM {job}
    WHERE id = ANY(%s) AND status = %s AND run_after <= %s AND (dispatched_at IS NULL OR dispatched_at < %s)
    FOR UPDATE SKIP LOCKED
)
RETURNING id, stage, max_runtime_s, trace_id, scope
"""


def _mark(ids: list[str], *, now: datetime, token: str) -> list[Admitted]:
    """Mark the still-ready jobs among ``ids`` as published with ``token``; in ``ids`` order."""
    stale = now - timedelta(seconds=settings.JOBS_REDISPATCH_AFTER_S)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_MARK_SQL_PG.format(job=connection.ops.quote_name(Job._meta.db_table)),
                           [now, token, ids, JobStatus.QUEUED, now, stale])
            marked = {row[0]: row for row in cursor.fetchall()}
        return [Admitted(i, marked[i][1], token, marked[i][2], marked[i][3], marked[i][4]) for i in ids if i in marked]
    with transaction.atomic():
        locked = {
            r["id"]: r
            for r in Job.objects.select_for_update(skip_locked=True)
            .filter(pk__in=ids, status=JobStatus.QUEUED, run_after__lte=now)
            .filter(Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=stale))
            .values("id", "stage", "max_runtime_s", "trace_id", "scope")
        }
        rows = [locked[i] for i in ids if i in locked]
        Job.objects.filter(pk__in=[r["id"] for r in rows], status=JobStatus.QUEUED).update(
            dispatched_at=now, dispatch_token=token
        )
    return [Admitted(r["id"], r["stage"], token, r["max_runtime_s"], r["trace_id"], r["scope"]) for r in rows]


def _admit(*, limit: int | None = None) -> list[Admitted]:
    """Steps 1–4 of the module docstring: choose and mark; nothing is published yet."""
    now = timezone.now()
    room = room_now(now).free
    if room <= 0:
        return []
    ids = admission_candidates(now=now, limit=min(limit or settings.JOBS_DISPATCH_BATCH, room))
    if not ids:
        return []
    return _mark(ids, now=now, token=secrets.token_urlsafe(16))


def _publish_admitted(admitted: list[Admitted]) -> None:
    failed = publish(admitted)
    if failed:
        _unmark(admitted, failed)


def dispatch_ready(*, limit: int | None = None, promote: bool = False) -> int:
    """One admission pass: admit ready jobs and publish them after commit; return how many.

    Runs in the caller's transaction when there is one (the marks commit with it, and the
    messages go out after that commit), else each statement commits on its own.
    """
    if promote:
        promote_due_retries()
    admitted = _admit(limit=limit)
    if admitted:
        transaction.on_commit(lambda: _publish_admitted(admitted))
    return len(admitted)


# Advisory lock keys (any two constants; "jobs" in ASCII, then 1 and 2).
LOCK_RUN = 0x6A6F6273_0001
LOCK_NEXT = 0x6A6F6273_0002


def dispatch_kick(*, force: bool = False, promote: bool = False) -> int:
    """A coalesced admission pass, outside any transaction; return how many were published.

    Steps: (1) unless ``force`` (the beat tick), count the room and return when a pass could not
    admit a batch (:attr:`Room.worth_a_pass`); (2) PostgreSQL: take ``NEXT`` or return (a pass
    that will see this caller's commits is already waiting), wait for ``RUN``, release ``NEXT``;
    (3) the pass (retries promoted first with ``promote``), its marks committed; (4) release
    ``RUN``; (5) publish.
    """
    if not force and not room_now().worth_a_pass:
        return 0
    if connection.vendor != "postgresql" or not connection.get_autocommit():
        # SQLite serialises writers anyway; inside a transaction the marks would not be visible
        # to the next pass before commit, so the pass is simply the caller's.
        return dispatch_ready(promote=promote)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_NEXT])
        row = cursor.fetchone()
        if not (row and row[0]):
            return 0
        try:
            # Wait for the running pass, then give NEXT to the next request (left to right).
            cursor.execute("SELECT pg_advisory_lock(%s), pg_advisory_unlock(%s)", [LOCK_RUN, LOCK_NEXT])
        except BaseException:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_NEXT])
            raise
        try:
            if promote:
                promote_due_retries()
            admitted = _admit()
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_RUN])
    if admitted:
        _publish_admitted(admitted)
    return len(admitted)


def dispatch_soon() -> None:
    """Ask for an admission pass after the current transaction commits (or now, outside one).

    Inside a transaction the room is counted at once, in that transaction (it sees the caller's
    own change: a finished job no longer in flight), and a pass is scheduled after commit only
    when it is worth one — under load the request is that one count, and the caller's work stays
    one transaction. Errors of the pass are logged, never raised: the beat tick is the backstop.
    """
    if transaction.get_connection().in_atomic_block:
        if room_now().worth_a_pass:
            transaction.on_commit(lambda: _kick_logged(force=True))
        return
    _kick_logged(force=False)


def _kick_logged(*, force: bool) -> None:
    try:
        dispatch_kick(force=force)
    except Exception:
        logger.warning("dispatch pass failed; the beat tick will retry", exc_info=True)
