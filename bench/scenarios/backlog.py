"""Cost vs backlog: throughput, CPU per job and submit→start latency with N jobs queued.

For each backlog size (default 1,000, 10,000 and 100,000; ``-o backlog_sizes=a,b,c``): the
tables are emptied, N ready ``demo.noop`` jobs over 100 sessions are inserted in bulk (rows,
creation stamps and chain heads, then ``ANALYZE`` as autovacuum would), and a worker and beat
start. With the backlog draining:

- throughput: jobs finished per second over a fixed window once the worker is warm, and the
  CPU seconds per finished job over the same window (worker, beat, the database's backends);
- latency: probe jobs submitted at a steady rate (10/s) in a session of their own with
  priority 10 — an interactive request arriving while a backlog waits — submit→start p50/p99.

The window is fixed, so the run time does not grow with N (only the bulk insert does). The
figures that matter are the ratios of the largest backlog to the smallest: the platform's cost
must not grow with what waits in its database (target ≤ 1.2). Governed side only: bare Celery
has no database, and its latency behind N queued messages is simply N / throughput.
"""

from __future__ import annotations

import time
from datetime import timedelta

from django.db import connection
from django.utils import timezone

from bench.harness import CpuMeter, Ctx, Row, paced, percentile
from bench.workload import wait_with_progress
from jobs.chain import jobs_stamp_bulk
from jobs.models import Job, JobRun, JobStatus
from jobs.services.submit import SubmitSpec, job_submit

ORDER = 30
DESCRIPTION = "throughput, CPU/job and submit→start with 1k/10k/100k jobs queued (ratio largest/smallest <= 1.2)"
TARGET_RATIO = 1.2
BACKLOG_SESSIONS = 100
PROBE_RATE = 10.0
PROBE_PRIORITY = 10
INSERT_CHUNK = 5000


def _sizes(ctx: Ctx) -> list[int]:
    raw = ctx.options.get("backlog_sizes", "1000,10000" if ctx.quick else "1000,10000,100000")
    sizes = sorted({int(x) for x in raw.split(",") if x.strip()})
    if not sizes or sizes[0] < 1:
        raise ValueError("-o backlog_sizes= takes positive integers, e.g. 1000,10000,100000")
    return sizes


def _insert_backlog(ctx: Ctx, n: int) -> None:
    """N queued no-ops, as job_submit would have left them, written in bulk."""
    principal = ctx.principal
    now = timezone.now()
    done = 0
    while done < n:
        chunk = [
            Job(session_id=f"bench-backlog-{(done + i) % BACKLOG_SESSIONS:03d}", principal=principal,
                job_type="demo.noop", scope="demo", permissions=["demo:run"], risk="low", status=JobStatus.QUEUED,
                submitted_status=JobStatus.QUEUED, inputs={"i": done + i}, max_runtime_s=30,
                policy_decision={"action": "allow", "reason": "backlog"},
                created_at=now + timedelta(microseconds=done + i), run_after=now)
            for i in range(min(INSERT_CHUNK, n - done))
        ]
        Job.objects.bulk_create(chunk)
        jobs_stamp_bulk([{"job_id": j.id, "event": "submitted", "actor": "principal:bench", "to_status": "queued",
                          "details": {"backlog": True}, "at": j.created_at} for j in chunk], heads={})
        done += len(chunk)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Job._meta.db_table}")


def _succeeded() -> int:
    return Job.objects.filter(status=JobStatus.SUCCEEDED).count()


def _measure(ctx: Ctx, n: int, window_s: float, probe_s: float) -> dict[str, float | int | None]:
    t_insert = time.monotonic()
    _insert_backlog(ctx, n)
    ctx.log(f"backlog {n}: inserted in {time.monotonic() - t_insert:.1f}s")
    out: dict[str, float | int | None] = {"backlog": n}
    with ctx.governed_worker() as worker, ctx.beat() as beat:
        # Warm: the pool children connect and import on the first jobs of the backlog itself.
        wait_with_progress(ctx, _succeeded, 40, timeout_s=60, interval_s=0.1)
        meter = CpuMeter({"worker": worker, "beat": beat}).start()
        n0, t0 = _succeeded(), time.time()
        with ctx.profiled(f"worker, backlog {n}", worker.pid):
            time.sleep(window_s)
        n1, t1 = _succeeded(), time.time()
        cpu = meter.stop()
        finished = n1 - n0
        out["throughput"] = finished / (t1 - t0)
        # The bench process only watched: CPU per job is the platform's side (worker, beat, backends).
        platform_cpu = cpu["total"] - cpu.get("bench process", 0.0) - cpu.get("bench backend", 0.0)
        out["cpu_ms"] = 1000.0 * platform_cpu / finished if finished else None
        out["queued_left"] = Job.objects.filter(status=JobStatus.QUEUED).count()
        # Probes: an interactive session arriving while the backlog waits.
        probe_ids: list[str] = []
        count = int(PROBE_RATE * probe_s)
        for _i, _slot in paced(count, PROBE_RATE, max_s=probe_s * 2):
            spec = SubmitSpec(job_type="demo.noop", inputs={}, session_id="bench-probe", priority=PROBE_PRIORITY)
            probe_ids.append(job_submit(principal=ctx.principal, spec=spec).job.id)
        wait_with_progress(ctx, lambda: JobRun.objects.filter(job_id__in=probe_ids).values("job_id").distinct().count(),
                           len(probe_ids), timeout_s=30, interval_s=0.2)
    latencies = []
    for created, started in Job.objects.filter(pk__in=probe_ids).values_list("created_at", "runs__started_at"):
        if started is not None:
            latencies.append((started - created).total_seconds() * 1000.0)
    out["probes"] = len(probe_ids)
    out["probes_started"] = len(latencies)
    out["p50"] = percentile(latencies, 50)
    out["p99"] = percentile(latencies, 99)
    ctx.log(f"backlog {n}: {out}")
    return out


def run(ctx: Ctx) -> list[Row]:
    window_s = ctx.seconds(20.0, 8.0)
    probe_s = 10.0 if not ctx.quick else 5.0
    results = []
    for n in _sizes(ctx):
        ctx.purge()
        results.append(_measure(ctx, n, window_s, probe_s))
    ctx.extra["sizes"] = results
    rows: list[Row] = []
    for r in results:
        note = "" if r["probes_started"] == r["probes"] else f"only {r['probes_started']}/{r['probes']} probes started"
        rows.append(Row(f"throughput with {r['backlog']:,} queued", r["throughput"], None, unit="jobs/s",
                        note=note))
        rows.append(Row(f"CPU per job with {r['backlog']:,} queued", r["cpu_ms"], None, unit="ms"))
        rows.append(Row(f"submit→start p50 with {r['backlog']:,} queued", r["p50"], None, unit="ms"))
        rows.append(Row(f"submit→start p99 with {r['backlog']:,} queued", r["p99"], None, unit="ms"))
    small, large = results[0], results[-1]
    if len(results) > 1:
        def ratio(a: float | int | None, b: float | int | None) -> float | None:
            return float(a) / float(b) if a and b else None

        slow = ratio(small["throughput"], large["throughput"])
        cpu = ratio(large["cpu_ms"], small["cpu_ms"])
        lat = ratio(large["p50"], small["p50"])
        label = f"{large['backlog']:,} vs {small['backlog']:,} queued"
        rows += [
            Row(f"throughput slowdown, {label}", slow, None, target=f"<= {TARGET_RATIO}",
                met=slow is not None and slow <= TARGET_RATIO, note="throughput at the smallest / at the largest"),
            Row(f"CPU per job growth, {label}", cpu, None, target=f"<= {TARGET_RATIO}",
                met=cpu is not None and cpu <= TARGET_RATIO),
            Row(f"submit→start p50 growth, {label}", lat, None, target=f"<= {TARGET_RATIO}",
                met=lat is not None and lat <= TARGET_RATIO),
        ]
    return rows
