"""Control: bulk cancel of thousands of queued jobs, and fair share under a flooding session.

Bulk cancel: N queued jobs of one session (inserted in bulk, each with its creation stamp), then
one ``POST /api/v1/jobs/cancel`` through Django's test client; the figure is that one call's
wall time (set-based transition + one INSERT of N stamps). Target: 5,000 in <= 1 s.

Fair share: session B submits 3 no-ops (its cap), alone (baseline) and right after session A submitted M
no-ops (the flood; A's backlog is still hundreds deep when B submits). The figure is B's start
latency (submit → claim, mean of the 3) under the flood divided by B alone: with fair admission
A's backlog does not delay B beyond a free worker slot (target ratio <= 2); FIFO admission would
make B wait for the whole backlog. Also reported: B's latency with a fifth of the flood (it should
not grow with A's backlog) and how many of A's jobs started between B's submit and B's first
start.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

from django.test import Client
from django.utils import timezone

from bench.harness import Ctx, Row
from bench.workload import wait_with_progress
from jobs.chain import jobs_stamp_bulk
from jobs.models import Job, JobRun, JobStatus
from jobs.services.control import jobs_cancel
from jobs.services.submit import SubmitSpec, job_submit

ORDER = 70
DESCRIPTION = "bulk cancel of 5,000 queued jobs (target <= 1 s); B's start latency under A's flood (ratio <= 2)"
B_JOBS = 3  # a session's default cap: all of B is admitted at once, only worker slots are waited for


def _bulk_cancel(ctx: Ctx, n: int) -> float:
    from rest_framework.authtoken.models import Token

    principal = ctx.principal
    session = "bench-cancel"
    later = timezone.now() + timedelta(hours=1)
    jobs = [Job(session_id=session, principal=principal, job_type="demo.noop", scope="demo", run_after=later)
            for _ in range(n)]
    Job.objects.bulk_create(jobs, batch_size=1000)
    jobs_stamp_bulk([{"job_id": j.id, "event": "submitted", "actor": "bench", "to_status": "queued"}
                     for j in jobs], heads={})
    token, _ = Token.objects.get_or_create(user=principal)
    client = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
    ctx.log(f"bulk cancel: {n} queued jobs inserted; cancelling in one call")
    t0 = time.perf_counter()
    response = client.post("/api/v1/jobs/cancel", data=json.dumps({"session_id": session}),
                           content_type="application/json")
    elapsed = time.perf_counter() - t0
    body = response.json()
    if response.status_code != 200 or body.get("cancelled") != n:
        raise RuntimeError(f"bulk cancel answered {response.status_code}: {body}")
    return elapsed


def _b_latency(ctx: Ctx, *, a_jobs: int, tag: str) -> tuple[float, int, int]:
    """B's mean start latency (s) after A submitted ``a_jobs`` no-ops; also how many of A's jobs
    started between B's submit and B's first start, and A's backlog when B submitted."""
    principal = ctx.principal
    a_session, b_session = f"bench-flood-A-{tag}", f"bench-guest-B-{tag}"
    for _ in range(a_jobs):
        job_submit(principal=principal, spec=SubmitSpec(job_type="demo.noop", inputs={}, session_id=a_session))
    backlog = Job.objects.filter(session_id=a_session, status=JobStatus.QUEUED).count()
    b_submitted = timezone.now()
    b_ids = [
        job_submit(principal=principal, spec=SubmitSpec(job_type="demo.noop", inputs={}, session_id=b_session)).job.id
        for _ in range(B_JOBS)
    ]
    wait_with_progress(
        ctx, lambda: Job.objects.filter(pk__in=b_ids, status=JobStatus.SUCCEEDED).count(), B_JOBS,
        timeout_s=120, interval_s=0.05,
    )
    latencies = []
    first_start = None
    for job in Job.objects.filter(pk__in=b_ids):
        start = JobRun.objects.filter(job=job).order_by("started_at").values_list("started_at", flat=True).first()
        if start is None:
            raise RuntimeError(f"B job {job.id} never started ({job.status})")
        latencies.append((start - job.created_at).total_seconds())
        first_start = start if first_start is None else min(first_start, start)
    a_between = JobRun.objects.filter(job__session_id=a_session, started_at__gt=b_submitted,
                                      started_at__lt=first_start).count()
    jobs_cancel(jobs=Job.objects.filter(session_id=a_session), actor="bench")
    wait_with_progress(ctx, lambda: int(not Job.objects.filter(
        session_id=a_session, status=JobStatus.RUNNING).exists()), 1, timeout_s=60, interval_s=0.1)
    return sum(latencies) / len(latencies), a_between, backlog


def run(ctx: Ctx) -> list[Row]:
    n_cancel = ctx.n_jobs(5000, 1000)
    cancel_s = _bulk_cancel(ctx, n_cancel)
    ctx.log(f"bulk cancel of {n_cancel}: {cancel_s * 1000:.0f} ms")

    flood = 1000 if not ctx.quick else 200
    with ctx.governed_worker(), ctx.beat():
        # Warm the worker and the connections so the baseline is not a cold start.
        _b_latency(ctx, a_jobs=0, tag="warm")
        base, _, _ = _b_latency(ctx, a_jobs=0, tag="base")
        ctx.log(f"B latency alone: {base * 1000:.0f} ms")
        small, _, small_backlog = _b_latency(ctx, a_jobs=flood // 5, tag="small")
        ctx.log(f"B latency with A's backlog of {small_backlog}: {small * 1000:.0f} ms")
        flooded, a_between, backlog = _b_latency(ctx, a_jobs=flood, tag="flood")
        ctx.log(f"B latency with A's backlog of {backlog}: {flooded * 1000:.0f} ms; A starts in between: {a_between}")
    ratio = flooded / base if base > 0 else float("inf")
    ctx.extra.update({"bulk_cancel_s": cancel_s, "b_latency_base_s": base, "b_latency_flood_s": flooded,
                      "a_starts_before_b": a_between, "a_backlog_at_b_submit": backlog,
                      "b_latency_small_flood_s": small, "a_small_backlog": small_backlog})
    return [
        Row(f"bulk cancel, {n_cancel} queued (one call)", cancel_s * 1000, None, unit="ms",
            target="<= 1000 ms" if n_cancel >= 5000 else "",
            met=(cancel_s <= 1.0) if n_cancel >= 5000 else None),
        Row(f"B start latency, A flooding {flood}", flooded * 1000, None, unit="ms",
            target="flood/alone <= 2", met=ratio <= 2,
            note=f"B alone: {base * 1000:.0f} ms; ratio {ratio:.2f}; A's backlog when B submitted: {backlog} "
                 f"(with a backlog of {small_backlog}: {small * 1000:.0f} ms — latency does not grow with it); "
                 f"A's jobs started between B's submit and B's first start: {a_between} "
                 f"(worker concurrency {ctx.concurrency})"),
    ]
