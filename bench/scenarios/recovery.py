"""Recovery: the time from a worker's death (SIGKILL) to its jobs running on another worker.

Each round: a victim worker (``--concurrency`` pool processes) and the beat start; as many
``demo.flaky {"sleep_s": 15}`` jobs as the victim has pool processes are submitted and claimed
by it; a standby worker starts and goes idle; then the victim's whole process group gets
SIGKILL. For every job the victim held, the figure is the time from the kill to the
``started_at`` of its next ``JobRun`` (the claim on the standby worker). The round ends when the
jobs finished.

Nothing in Celery brings those jobs back quickly: the dead worker's messages stay unacked in
Redis until the visibility timeout (``CELERY_VISIBILITY_TIMEOUT_S``, 3600 s by default; kombu's
``QoS.restore_visible``). The platform's lease does it, so the figure is dominated by::

    lease left at the kill (≤ JOBS_LEASE_S, ≥ JOBS_LEASE_S − JOBS_HEARTBEAT_S)
    + reaper tick (≤ JOBS_REAPER_TICK_S)  + retry backoff (demo.flaky: 0.2 s ± 25 %)
    + dispatch tick (≤ JOBS_DISPATCH_TICK_S)  + publish → claim (milliseconds)

The settings used are options (``-o lease_s=10 -o heartbeat_s=2 -o reaper_tick_s=1
-o dispatch_tick_s=1 -o rounds=3``) and are written into the result, because the number
means nothing without them.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench.harness import Ctx, Row, percentile, wait_until
from jobs.models import TERMINAL_STATUSES, Job, JobRun, JobStatus

ORDER = 60
DESCRIPTION = "worker killed with SIGKILL → its jobs running on another worker (lease + reaper)"
SLEEP_S = 15.0
FLAKY_BACKOFF_S = 0.2 * 1.25  # demo.flaky RetryPolicy(backoff_base_s=0.2), upper jitter


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Environment for the processes started inside the block (they inherit os.environ)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _round(ctx: Ctx, index: int, pool: int) -> list[float]:
    session = f"bench-recovery-{index}"
    principal = ctx.principal
    from jobs.services.submit import SubmitSpec, job_submit

    with ctx.beat(), ctx.governed_worker(concurrency=pool) as victim:
        ids = [
            job_submit(principal=principal,
                       spec=SubmitSpec(job_type="demo.flaky", inputs={"sleep_s": SLEEP_S}, session_id=session)).job.id
            for _ in range(pool)
        ]
        if not wait_until(lambda: Job.objects.filter(pk__in=ids, status=JobStatus.RUNNING).count() == pool,
                          timeout_s=30):
            raise RuntimeError("the victim did not claim every job")
        with ctx.governed_worker(concurrency=pool):
            assert victim.pid is not None
            os.killpg(victim.pid, signal.SIGKILL)
            killed_at = time.time()
            ctx.log(f"round {index}: killed victim pid {victim.pid} holding {pool} job(s)")

            def reclaimed() -> bool:
                return JobRun.objects.filter(job_id__in=ids, attempt=2).count() == pool

            if not wait_until(reclaimed, timeout_s=120, interval_s=0.05):
                raise RuntimeError("jobs were not reclaimed within 120 s")
            seconds = [run.started_at.timestamp() - killed_at
                       for run in JobRun.objects.filter(job_id__in=ids, attempt=2)]
            wait_until(lambda: Job.objects.filter(pk__in=ids, status__in=TERMINAL_STATUSES).count() == pool,
                       timeout_s=SLEEP_S + 60)
            done = Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count()
            ctx.log(f"round {index}: reclaimed after {[round(s, 2) for s in seconds]} s; {done}/{pool} succeeded")
    return seconds


def run(ctx: Ctx) -> list[Row]:
    knobs = {
        "JOBS_LEASE_S": ctx.options.get("lease_s", "10"),
        "JOBS_HEARTBEAT_S": ctx.options.get("heartbeat_s", "2"),
        "JOBS_REAPER_TICK_S": ctx.options.get("reaper_tick_s", "1"),
        "JOBS_DISPATCH_TICK_S": ctx.options.get("dispatch_tick_s", "1"),
    }
    rounds = int(ctx.options.get("rounds", "1" if ctx.quick else "3"))
    pool = ctx.concurrency
    ctx.extra["recovery_settings"] = {**knobs, "rounds": rounds, "jobs_per_round": pool}
    samples: list[float] = []
    with _env(knobs):
        for index in range(rounds):
            samples += _round(ctx, index, pool)
    ctx.extra["recovery_samples_s"] = [round(s, 3) for s in samples]
    lease, beat = float(knobs["JOBS_LEASE_S"]), float(knobs["JOBS_HEARTBEAT_S"])
    bound = lease + float(knobs["JOBS_REAPER_TICK_S"]) + float(knobs["JOBS_DISPATCH_TICK_S"]) + FLAKY_BACKOFF_S + 1.0
    p50 = percentile(samples, 50)
    worst = max(samples) if samples else None
    setting_note = ", ".join(f"{k}={v}" for k, v in knobs.items())
    return [
        Row("recovery p50 (death → running elsewhere)", p50, None, unit="s",
            target=f"<= lease + ticks + backoff + 1 s = {bound:.1f} s",
            met=worst is not None and worst <= bound,
            note=f"{len(samples)} job(s) over {rounds} round(s); {setting_note}; expected floor "
                 f"≈ lease − heartbeat = {lease - beat:.0f} s. Bare Celery: the dead worker's unacked "
                 f"messages return only after visibility_timeout (CELERY_VISIBILITY_TIMEOUT_S)"),
        Row("recovery max", worst, None, unit="s"),
    ]
