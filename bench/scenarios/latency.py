"""Latency: submit→start at a steady rate (default 50/s for 20 s) on an otherwise idle worker.

Bare: each task gets ``time.time()`` taken just before ``apply_async`` and records
``time.time()`` when it starts. Governed: start is the first ``JobRun.started_at`` (the claim in
the worker, before governance re-check and handler), submit is ``Job.created_at`` (set inside
``job_submit`` after validation and policy, before the insert). A second governed figure uses
the time just before the ``job_submit`` call, which includes validation and policy evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from django.db.models import Min

from bench import bare_app
from bench.harness import Ctx, Row, paced, percentile
from bench.workload import Submitter, bare_warmup, governed_warmup, session_names, wait_with_progress
from jobs.models import Job, JobRun

ORDER = 20
DESCRIPTION = "steady-rate submit→start latency p50/p99 (target p50 <= bare p50 + 10 ms)"
TARGET_EXTRA_MS = 10.0


def _drain_s(ctx: Ctx) -> float:
    """How long to wait for the last submitted jobs to start (bounded: overload shows as INCOMPLETE)."""
    return 10.0 if ctx.quick else 30.0


@dataclass
class Side:
    sent: int = 0
    rate: float = 0.0
    lat_ms: list[float] = field(default_factory=list)  # submit → start
    lat_call_ms: list[float] = field(default_factory=list)  # governed: before the submit call → start

    @property
    def started(self) -> int:
        return len(self.lat_ms)


def _bare(ctx: Ctx, count: int, rate: float, duration: float) -> Side:
    client = ctx.redis()
    side = Side()
    with ctx.bare_worker():
        bare_warmup(ctx)
        ctx.log(f"bare: {count} at {rate:g}/s")
        t0 = time.monotonic()
        for _ in paced(count, rate, max_s=duration * 2):
            bare_app.publish("latency")
            side.sent += 1
        spent = time.monotonic() - t0
        wait_with_progress(ctx, lambda: bare_app.count_results(client, "latency"), side.sent, timeout_s=_drain_s(ctx))
    side.rate = side.sent / spent if spent else 0.0
    side.lat_ms = [(start - pub) * 1000.0 for pub, start, _ in bare_app.read_results(client, "latency")]
    return side


def _governed(ctx: Ctx, count: int, rate: float, duration: float) -> Side:
    sessions = session_names(ctx, "bench-latency")
    submit = Submitter(ctx)
    called_at: dict[str, float] = {}
    side = Side()
    with ctx.governed_worker(), ctx.beat():
        governed_warmup(ctx, submit)
        ctx.log(f"governed: {count} at {rate:g}/s via {submit.mode} over {len(sessions)} session(s)")
        t0 = time.monotonic()
        for i, _slot in paced(count, rate, max_s=duration * 2):
            before = time.time()
            called_at[submit(session_id=sessions[i % len(sessions)], inputs={"i": i})] = before
        spent = time.monotonic() - t0
        side.sent = len(called_at)

        def started() -> int:
            return JobRun.objects.filter(job__session_id__in=sessions).values("job_id").distinct().count()

        wait_with_progress(ctx, started, side.sent, timeout_s=_drain_s(ctx), interval_s=0.25)
    side.rate = side.sent / spent if spent else 0.0
    rows = (Job.objects.filter(session_id__in=sessions).annotate(first_start=Min("runs__started_at"))
            .values_list("id", "created_at", "first_start"))
    for job_id, created_at, first_start in rows:
        if first_start is None:
            continue
        side.lat_ms.append((first_start - created_at).total_seconds() * 1000.0)
        side.lat_call_ms.append((first_start.timestamp() - called_at[job_id]) * 1000.0)
    return side


def _summary(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
            "max": max(values) if values else None}


def run(ctx: Ctx) -> list[Row]:
    rate = ctx.rate
    duration = ctx.seconds(20.0, 5.0)
    count = max(1, int(rate * duration))
    bare = _bare(ctx, count, rate, duration)
    gov = _governed(ctx, count, rate, duration)
    b, g, gc = _summary(bare.lat_ms), _summary(gov.lat_ms), _summary(gov.lat_call_ms)
    ctx.extra.update({
        "count": count, "rate": rate, "duration_s": duration,
        "bare": {"sent": bare.sent, "started": bare.started, "rate": bare.rate, "ms": b},
        "governed": {"sent": gov.sent, "started": gov.started, "rate": gov.rate, "ms": g, "ms_from_call": gc},
    })
    missing = [f"{name} {s.started}/{s.sent} started" for name, s in (("bare", bare), ("governed", gov))
               if s.started != s.sent]
    note = ("INCOMPLETE: " + ", ".join(missing) + "; percentiles cover started jobs only (an underestimate)"
            if missing else "")
    met = None
    if g["p50"] is not None and b["p50"] is not None:
        met = not missing and g["p50"] <= b["p50"] + TARGET_EXTRA_MS
    return [
        Row("submit→start p50", g["p50"], b["p50"], unit="ms", target=f"<= bare + {TARGET_EXTRA_MS:g} ms",
            met=met, note=note),
        Row("submit→start p99", g["p99"], b["p99"], unit="ms"),
        Row("submit call→start p50", gc["p50"], b["p50"], unit="ms",
            note="governed clock starts just before the submit call "
                 "(adds validation + policy, and HTTP with -o submit=rest)"),
        Row("submit call→start p99", gc["p99"], b["p99"], unit="ms"),
        Row("achieved rate", gov.rate, bare.rate, unit="jobs/s", target=f"{rate:g}/s requested"),
    ]
