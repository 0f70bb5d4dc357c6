"""The product brief's load test: 1,000 jobs enqueued at once by 10 concurrent sessions.

Ten threads — one agent session each, each with its own database connection — are released
together and submit 100 ``demo.noop`` jobs each as fast as they can (``-o load_jobs=``,
``-o load_sessions=`` change the numbers). Per session: start latency (submit → the claim in
the worker) p50 and p99; across sessions: the spread (worst session's p50 / best session's p50,
same for p99) — fair share should keep the sessions together, not serve the first one to arrive
first. Bare Celery: the same ten threads publishing to one queue, latency from publish to
start; it has no notion of sessions, so its spread is whatever the FIFO interleaving gives.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from django.db import connection

from bench import bare_app
from bench.harness import Ctx, Row, percentile
from bench.workload import Submitter, bare_warmup, governed_warmup, wait_with_progress
from jobs.models import Job, JobRun
from jobs.services.submit import SubmitSpec, job_submit

ORDER = 40
DESCRIPTION = "1,000 jobs at once over 10 sessions: start latency p50/p99 per session and the spread"


def _together(n_threads: int, work: Any) -> float:
    """Run ``work(i)`` in ``n_threads`` threads released at once; return the wall time."""
    barrier = threading.Barrier(n_threads + 1)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.monotonic() - t0


def _summary(by_session: dict[str, list[float]]) -> dict[str, Any]:
    per = {s: {"n": len(v), "p50": percentile(v, 50), "p99": percentile(v, 99)} for s, v in by_session.items()}
    p50s = [p["p50"] for p in per.values() if p["p50"] is not None]
    p99s = [p["p99"] for p in per.values() if p["p99"] is not None]
    every = [x for v in by_session.values() for x in v]
    return {
        "sessions": per,
        "p50": percentile(every, 50), "p99": percentile(every, 99),
        "worst_p50": max(p50s, default=None), "best_p50": min(p50s, default=None),
        "worst_p99": max(p99s, default=None), "best_p99": min(p99s, default=None),
        "spread_p50": (max(p50s) / min(p50s)) if p50s and min(p50s) > 0 else None,
        "spread_p99": (max(p99s) / min(p99s)) if p99s and min(p99s) > 0 else None,
    }


def _governed(ctx: Ctx, n_sessions: int, per_session: int) -> dict[str, Any]:
    sessions = [f"bench-load-{i:02d}" for i in range(n_sessions)]
    ids: dict[str, list[str]] = {s: [] for s in sessions}
    with ctx.governed_worker(), ctx.beat():
        governed_warmup(ctx, Submitter(ctx))
        principal = ctx.principal

        def submit_all(i: int) -> None:
            for k in range(per_session):
                spec = SubmitSpec(job_type="demo.noop", inputs={"k": k}, session_id=sessions[i])
                ids[sessions[i]].append(job_submit(principal=principal, spec=spec).job.id)

        ctx.log(f"governed: {n_sessions} sessions submitting {per_session} each, together")
        submit_s = _together(n_sessions, submit_all)
        total = n_sessions * per_session
        wait_with_progress(ctx, lambda: JobRun.objects.filter(job__session_id__in=sessions)
                           .values("job_id").distinct().count(), total, timeout_s=120, interval_s=0.25)
    by_session: dict[str, list[float]] = {s: [] for s in sessions}
    for session, created, started in (Job.objects.filter(session_id__in=sessions)
                                      .values_list("session_id", "created_at", "runs__started_at")):
        if started is not None:
            by_session[session].append((started - created).total_seconds() * 1000.0)
    out = _summary(by_session)
    out["submit_s"] = submit_s
    out["started"] = sum(len(v) for v in by_session.values())
    return out


def _bare(ctx: Ctx, n_sessions: int, per_session: int) -> dict[str, Any]:
    client = ctx.redis()
    tags = [f"load-{i:02d}" for i in range(n_sessions)]
    with ctx.bare_worker():
        bare_warmup(ctx)

        def publish_all(i: int) -> None:
            for _ in range(per_session):
                bare_app.publish(tags[i])

        submit_s = _together(n_sessions, publish_all)
        total = n_sessions * per_session
        wait_with_progress(ctx, lambda: sum(bare_app.count_results(client, t) for t in tags), total,
                           timeout_s=60, interval_s=0.05)
    by_session = {t: [(start - pub) * 1000.0 for pub, start, _ in bare_app.read_results(client, t)] for t in tags}
    out = _summary(by_session)
    out["submit_s"] = submit_s
    out["started"] = sum(len(v) for v in by_session.values())
    return out


def run(ctx: Ctx) -> list[Row]:
    n_sessions = int(ctx.options.get("load_sessions", "10"))
    total = int(ctx.options.get("load_jobs", "1000"))
    per_session = max(1, total // n_sessions)
    bare = _bare(ctx, n_sessions, per_session)
    gov = _governed(ctx, n_sessions, per_session)
    ctx.extra.update({"bare": bare, "governed": gov, "sessions": n_sessions, "per_session": per_session})
    expected = n_sessions * per_session
    note = "" if gov["started"] == expected and bare["started"] == expected else (
        f"INCOMPLETE: governed {gov['started']}/{expected}, bare {bare['started']}/{expected} started")
    per_session_note = "; ".join(
        f"{s[-2:]}: {v['p50']:.0f}/{v['p99']:.0f}" for s, v in sorted(gov["sessions"].items())
        if v["p50"] is not None and v["p99"] is not None
    )
    label = f"{expected:,} jobs at once over {n_sessions} sessions"
    return [
        Row(f"start latency p50, {label}", gov["p50"], bare["p50"], unit="ms", note=note),
        Row(f"start latency p99, {label}", gov["p99"], bare["p99"], unit="ms"),
        Row("worst session's p50 / best session's p50", gov["spread_p50"], bare["spread_p50"],
            note=f"governed per session p50/p99 ms — {per_session_note}"),
        Row("worst session's p99 / best session's p99", gov["spread_p99"], bare["spread_p99"]),
        Row("submit time of all sessions (10 threads)", gov["submit_s"], bare["submit_s"], unit="s"),
    ]
