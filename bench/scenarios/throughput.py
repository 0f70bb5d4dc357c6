"""Throughput: N no-ops published at once, time until the last one has run.

Bare: ``bench.bare_app.publish`` N times, then wait until N tasks recorded their finish.
Governed: ``job_submit`` of N ``demo.noop`` jobs (the dispatcher runs after every submit and
every finish, beat's tick is the backstop), then wait until all are terminal. The clock starts
before the first publish/submit and stops at the last finish (bare: the task's own timestamp;
governed: ``Job.finished_at``), so publishing and running overlap the same way on both sides.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

from django.db.models import Max

from bench import bare_app
from bench.harness import CpuMeter, Ctx, Row, db_sessions_total
from bench.workload import (
    Submitter,
    bare_warmup,
    governed_warmup,
    session_names,
    status_counts,
    terminal_count,
    wait_with_progress,
)
from jobs.models import Job, JobStatus

ORDER = 10
DESCRIPTION = "N no-op tasks/jobs at once: jobs per second until the last finished (target ratio >= 0.5)"
TARGET_RATIO = 0.5


@dataclass
class Side:
    n: int
    sent: int = 0  # published / submitted within the budget
    finished: int = 0  # bare: ran; governed: succeeded
    elapsed_s: float = 0.0  # first publish → last finish
    publish_s: float = 0.0  # first → last publish
    cpu: dict[str, float] = field(default_factory=dict)
    db_connections: int | None = None  # connections opened to the database in the window
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.finished / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def cpu_ms_per_job(self, submit_parts: tuple[str, ...]) -> float | None:
        """Submit-side CPU per job submitted plus run-side CPU per job finished (a run cut by the
        budget submitted more than it finished)."""
        if not self.sent or not self.finished or not self.cpu:
            return None
        submit = sum(self.cpu.get(p, 0.0) for p in submit_parts)
        run = self.cpu["total"] - submit
        return 1000.0 * (submit / self.sent + run / self.finished)


SUBMIT_PARTS = ("bench process", "bench backend")


def _budget_s(ctx: Ctx) -> float:
    """Seconds one side may take from its first publish (``-o budget_s=``); keeps the run bounded."""
    return float(ctx.options.get("budget_s", "45" if ctx.quick else "200"))


def _bare(ctx: Ctx, n: int) -> Side:
    client = ctx.redis()
    budget = _budget_s(ctx)
    side = Side(n)
    with ctx.bare_worker() as worker:
        bare_warmup(ctx)
        ctx.log(f"bare: publishing {n}")
        meter = CpuMeter({"worker": worker}, database=False).start()
        t0 = time.time()
        while side.sent < n and time.time() - t0 < budget:
            bare_app.publish("throughput")
            side.sent += 1
        side.publish_s = time.time() - t0
        side.finished = wait_with_progress(ctx, lambda: bare_app.count_results(client, "throughput"), side.sent,
                                           timeout_s=max(1.0, budget - side.publish_s), interval_s=0.05)
        side.cpu = meter.stop()
    results = bare_app.read_results(client, "throughput")
    side.elapsed_s = max((r[2] for r in results), default=time.time()) - t0
    return side


def _governed(ctx: Ctx, n: int) -> Side:
    sessions = session_names(ctx, "bench-throughput")
    submit = Submitter(ctx)
    budget = _budget_s(ctx)
    side = Side(n)
    with ctx.governed_worker() as worker, ctx.beat() as beat:
        governed_warmup(ctx, submit)
        ctx.log(f"governed: submitting {n} via {submit.mode} over {len(sessions)} session(s)")
        meter = CpuMeter({"worker": worker, "beat": beat}).start()
        sessions_before = db_sessions_total()
        t0 = time.time()
        with ctx.profiled("governed worker", worker.pid), ctx.profiled("governed submit", os.getpid(), children=False):
            while side.sent < n and time.time() - t0 < budget:
                submit(session_id=sessions[side.sent % len(sessions)], inputs={"i": side.sent})
                side.sent += 1
            side.publish_s = time.time() - t0
            ctx.log(f"governed: submitted {side.sent} in {side.publish_s:.1f}s")
            wait_with_progress(ctx, lambda: terminal_count(sessions), side.sent,
                               timeout_s=max(1.0, budget - side.publish_s), interval_s=0.25)
        side.cpu = meter.stop()
        sessions_after = db_sessions_total()
    if sessions_before is not None and sessions_after is not None:
        side.db_connections = sessions_after - sessions_before
    last = Job.objects.filter(session_id__in=sessions).aggregate(last=Max("finished_at"))["last"]
    side.elapsed_s = (last.timestamp() if last is not None else time.time()) - t0
    side.statuses = status_counts(sessions)
    side.finished = side.statuses.get(JobStatus.SUCCEEDED, 0)
    return side


def run(ctx: Ctx) -> list[Row]:
    n = ctx.n_jobs(5000, 300)
    bare = _bare(ctx, n)
    ctx.log(f"bare: {bare.finished}/{n} in {bare.elapsed_s:.2f}s, CPU {bare.cpu}")
    gov = _governed(ctx, n)
    ctx.log(f"governed: {gov.finished}/{n} succeeded in {gov.elapsed_s:.2f}s, CPU {gov.cpu}")
    ctx.extra.update({"bare": asdict(bare), "governed": asdict(gov)})

    complete = bare.finished == n and gov.finished == n
    note = "" if complete else (
        f"INCOMPLETE within the {_budget_s(ctx):g}s budget: bare {bare.finished}/{n} ran; governed "
        f"{gov.sent} submitted, statuses {gov.statuses}; the rate is over what finished"
    )
    ratio = gov.rate / bare.rate if bare.rate else 0.0
    cpu_note = "; ".join(
        f"{name}: " + ", ".join(f"{k} {v:.1f}s" for k, v in side.cpu.items() if k != "total")
        for name, side in (("governed", gov), ("bare", bare))
    )
    return [
        Row(f"throughput, {n} no-ops", gov.rate, bare.rate, unit="jobs/s", target=f"ratio >= {TARGET_RATIO}",
            met=complete and ratio >= TARGET_RATIO, note=note),
        Row("submit/publish rate", gov.sent / gov.publish_s, bare.sent / bare.publish_s, unit="jobs/s",
            note=f"governed: one thread submitting via {ctx.options.get('submit', 'service')} "
                 "(validate, policy, insert, stamp, dispatch pass); bare: apply_async"),
        Row("wall time to last finish", gov.elapsed_s, bare.elapsed_s, unit="s"),
        Row("CPU per job", gov.cpu_ms_per_job(SUBMIT_PARTS), bare.cpu_ms_per_job(SUBMIT_PARTS), unit="ms",
            note=f"CPU seconds, less sensitive to other load than wall time — {cpu_note}. Not counted: "
                 "Redis, and PostgreSQL backends that exit inside the window (see the next row), so the "
                 "governed figure is a lower bound"),
        Row("DB connections opened per job",
            gov.db_connections / gov.finished if gov.db_connections is not None and gov.finished else None, None,
            note="pg_stat_database.sessions; Celery's Django fixup closes the worker's connection around "
                 "every task unless CELERY_DB_REUSE_MAX is set (celery/fixups/django.py, close_database)"),
    ]
