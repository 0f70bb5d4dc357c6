"""Web tier: REST submit over a real socket, batch submit, list latency with 1,000 open streams.

Every figure talks to the platform's web server as ``runplatform`` runs it (uvicorn serving
``config.asgi``, 2 processes) over loopback HTTP with keep-alive connections (httpx). No Celery
worker runs: these are the web tier's figures (each submit still runs its dispatch pass, which
publishes to the broker until ``JOBS_MAX_IN_FLIGHT`` jobs are out). The client threads run in
the bench process and share the machine's CPUs with the server.

1. **REST single submit**: N ``demo.noop`` submits (default 2,000; quick 300) from 4 client
   threads, each on its own connection; jobs/s = N / wall time from the first request to the last
   answer. For scale: one-at-a-time submits took 65 s for 5,000 (77/s) before the ASGI tier.
2. **Batch submit**: B batches of 1,000 ``demo.noop`` (default 10; quick 3) from 2 client threads
   (one per web process); jobs/s = accepted jobs / wall time. Target ≥ 5,000 jobs/s.
3. **List latency with S open streams** (default 1,000; quick 200): S jobs are submitted in one
   batch with ``run_after`` an hour away (queued and idle), one event stream per job is opened
   from an asyncio client in a thread of its own, and once every stream has sent its first bytes
   a second principal's ``GET /api/v1/jobs?limit=50`` is timed 50 times in a row (p50, p99).
   Target p99 < 200 ms. The same requests with no stream open are the baseline (in the note); the
   server's threads and database connections while the streams are open go to the JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bench.harness import CpuMeter, Ctx, ManagedProcess, Row, percentile
from governance.services import principal_ensure

ORDER = 80
DESCRIPTION = "web tier: REST submit (4 threads), batch submit (target >= 5,000 jobs/s), list p99 with 1,000 streams"
BATCH = 1000
TARGET_BATCH_RATE = 5000.0
TARGET_LIST_P99_MS = 200.0


def _client(url: str, token: str, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=120, **kwargs)


def _submit_rate(url: str, token: str, n: int, threads: int = 4) -> float:
    body = json.dumps({"job_type": "demo.noop", "inputs": {}, "session_id": "bench-rest"}).encode()
    errors: list[str] = []
    barrier = threading.Barrier(threads + 1)

    def work(count: int) -> None:
        with _client(url, token) as client:
            client.get("/api/v1/me")  # connect first
            barrier.wait()
            for _ in range(count):
                response = client.post("/api/v1/jobs", content=body, headers={"Content-Type": "application/json"})
                if response.status_code != 202:
                    errors.append(f"{response.status_code} {response.text[:200]}")

    workers = [threading.Thread(target=work, args=(n // threads + (1 if i < n % threads else 0),))
               for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} submits failed, e.g. {errors[0]}")
    return n / elapsed


def _batch_body(n: int, tag: str, **extra: Any) -> bytes:
    return json.dumps({"jobs": [{"job_type": "demo.noop", "inputs": {"i": i}, "session_id": f"bench-{tag}-{i % 50}",
                                 **extra} for i in range(n)]}).encode()


def _batch_rate(url: str, token: str, batches: int, threads: int = 2) -> tuple[float, list[float]]:
    payloads = [_batch_body(BATCH, f"batch{b}") for b in range(batches)]
    accepted = [0] * threads
    durations: list[float] = []
    errors: list[str] = []
    barrier = threading.Barrier(threads + 1)

    def work(index: int) -> None:
        with _client(url, token) as client:
            client.get("/api/v1/me")
            barrier.wait()
            for payload in payloads[index::threads]:
                t0 = time.perf_counter()
                response = client.post("/api/v1/jobs/batch", content=payload,
                                       headers={"Content-Type": "application/json"})
                durations.append(time.perf_counter() - t0)
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text[:200]}")
                    continue
                accepted[index] += sum(1 for r in response.json()["results"] if r["code"] == 202)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} batches failed, e.g. {errors[0]}")
    return sum(accepted) / elapsed, durations


def _list_latencies(url: str, token: str, count: int = 50) -> list[float]:
    samples = []
    with _client(url, token) as client:
        client.get("/api/v1/jobs?limit=50")
        for _ in range(count):
            t0 = time.perf_counter()
            response = client.get("/api/v1/jobs?limit=50")
            samples.append((time.perf_counter() - t0) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"list answered {response.status_code}")
    return samples


class Streams:
    """``count`` open event streams, held by an asyncio loop in a thread of its own."""

    def __init__(self, url: str, token: str, job_ids: list[str]) -> None:
        self.url, self.token, self.job_ids = url, token, job_ids
        self.opened = 0
        self.ended = 0
        self.failures: list[str] = []
        self._all_open = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),),
                                        name="bench-streams", daemon=True)

    def __enter__(self) -> Streams:
        self._thread.start()
        if not self._all_open.wait(180):
            raise RuntimeError(f"only {self.opened} of {len(self.job_ids)} streams opened: {self.failures[:3]}")
        return self

    def __exit__(self, *_: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        limits = httpx.Limits(max_connections=len(self.job_ids) + 10, max_keepalive_connections=0)
        timeout = httpx.Timeout(60.0, read=None)
        async with httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Token {self.token}"},
                                     limits=limits, timeout=timeout) as client:
            tasks = [asyncio.create_task(self._follow(client, job_id)) for job_id in self.job_ids]
            await self._stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, client: httpx.AsyncClient, job_id: str) -> None:
        try:
            async with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
                first = True
                async for _ in response.aiter_bytes():
                    if first:
                        first = False
                        self.opened += 1
                        if self.opened == len(self.job_ids):
                            self._all_open.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures.append(repr(exc))
        self.ended += 1


def _cpu_note(cpu: dict[str, float], jobs: int) -> str:
    """CPU per job of the web server and the database (less sensitive to other load than the
    rate), and the rate those alone would allow on this machine's CPUs."""
    server = cpu.get("web", 0.0) + cpu.get("other backends", 0.0) + cpu.get("bench backend", 0.0)
    per_job_ms = 1000.0 * server / jobs if jobs else 0.0
    cpus = os.cpu_count() or 1
    capacity = f", i.e. {1000.0 * cpus / per_job_ms:,.0f} jobs/s on {cpus} CPUs" if per_job_ms else ""
    return (f"CPU per job: web server + PostgreSQL {per_job_ms:.3f} ms{capacity}; "
            f"the bench's own client {1000.0 * cpu.get('bench process', 0.0) / max(jobs, 1):.3f} ms")


def _threads(proc: ManagedProcess) -> int:
    """Threads of the web server's processes (the uvicorn supervisor and its workers)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == proc.pid:  # process group
            total += int(fields[17])
    return total


def _db_connections() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid()")
        return int(cursor.fetchone()[0])


def run(ctx: Ctx) -> list[Row]:
    from rest_framework.authtoken.models import Token

    token = Token.objects.get_or_create(user=ctx.principal)[0].key
    lister = principal_ensure(username="bench-lister", grants=["demo:*"]).token
    n_submits = ctx.n_jobs(2000, 300)
    batches = 3 if ctx.quick else 10
    streams = int(ctx.options.get("streams", "200" if ctx.quick else "1000"))
    rows: list[Row] = []
    with ctx.web_server(workers=2) as web:
        url = web.url  # type: ignore[attr-defined]
        ctx.log("warm-up")
        _submit_rate(url, token, 40)
        ctx.log(f"REST single submit: {n_submits} jobs, 4 client threads")
        meter = CpuMeter({"web": web}).start()
        rest_rate = _submit_rate(url, token, n_submits)
        rest_cpu = meter.stop()
        ctx.extra["rest_cpu_s"] = rest_cpu
        rows.append(Row("REST submit over a socket, 4 client threads", governed=rest_rate, bare=None,
                        unit="jobs/s", note=_cpu_note(rest_cpu, n_submits)))
        ctx.purge()
        ctx.log(f"batch submit: {batches} x {BATCH} jobs, 2 client threads")
        meter = CpuMeter({"web": web}).start()
        batch_rate, durations = _batch_rate(url, token, batches)
        batch_cpu = meter.stop()
        ctx.extra.update(batch_request_s=[round(d, 3) for d in durations], batch_cpu_s=batch_cpu)
        rows.append(Row(f"batch submit, {BATCH:,} per request, 2 client threads", governed=batch_rate, bare=None,
                        unit="jobs/s", target=f">= {TARGET_BATCH_RATE:,.0f} jobs/s",
                        met=batch_rate >= TARGET_BATCH_RATE,
                        note=f"one {BATCH:,}-job request took {percentile(durations, 50) or 0:.3f} s (median); "
                             + _cpu_note(batch_cpu, batches * BATCH)))
        ctx.purge()
        with _client(url, lister) as client:
            client.post("/api/v1/jobs/batch", content=_batch_body(50, "lister"),
                        headers={"Content-Type": "application/json"}).raise_for_status()
        baseline = _list_latencies(url, lister)
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        ctx.log(f"list latency: opening {streams} event streams on idle jobs")
        with _client(url, token) as client:
            job_ids = []
            for start in range(0, streams, BATCH):
                response = client.post("/api/v1/jobs/batch", content=_batch_body(
                    min(BATCH, streams - start), f"idle{start}", run_after=later),
                    headers={"Content-Type": "application/json"})
                job_ids += [r["job_id"] for r in response.json()["results"]]
        threads_before, db_before = _threads(web), _db_connections()
        with Streams(url, token, job_ids) as held:
            time.sleep(1.0)
            threads_open, db_open = _threads(web), _db_connections()
            samples = _list_latencies(url, lister)
            still_open = held.opened - held.ended
        ctx.extra.update(list_ms_with_streams=[round(s, 2) for s in samples],
                         list_ms_baseline=[round(s, 2) for s in baseline],
                         streams=streams, streams_open_during_list=still_open,
                         server_threads={"before": threads_before, "streams_open": threads_open},
                         db_connections={"before": db_before, "streams_open": db_open})
        p50, p99 = percentile(samples, 50) or 0.0, percentile(samples, 99) or 0.0
        note = (f"no stream open: p50 {percentile(baseline, 50) or 0:.1f} ms, p99 {percentile(baseline, 99) or 0:.1f} "
                f"ms; server threads {threads_before} -> {threads_open}, database connections {db_before} -> "
                f"{db_open} with the streams open")
        rows.append(Row(f"list p50 with {streams:,} open streams", governed=p50, bare=None, unit="ms"))
        rows.append(Row(f"list p99 with {streams:,} open streams", governed=p99, bare=None, unit="ms",
                        target=f"< {TARGET_LIST_P99_MS:.0f} ms", met=p99 < TARGET_LIST_P99_MS and still_open == streams,
                        note=note))
    return rows
