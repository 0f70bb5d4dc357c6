"""Load helpers shared by scenarios: submitting demo jobs, warming up, waiting for outcomes.

Governed submits go through ``jobs.services.submit.job_submit`` — the service the REST view calls,
minus HTTP parsing and authentication — or, with ``-o submit=rest``, through the REST endpoint
itself via Django's in-process test ``Client`` (DRF parsing, token auth, serializers; no socket).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench import bare_app
from bench.harness import Ctx, wait_until

WARMUP = 20  # per side: the pool children open their connections and import everything first
DEFAULT_SESSIONS = 100


class Submitter:
    """Submit one job and return its id, through the service (default) or the REST API."""

    def __init__(self, ctx: Ctx, *, job_type: str = "demo.noop") -> None:
        self.mode = ctx.options.get("submit", "service")
        if self.mode not in ("service", "rest"):
            raise ValueError(f"-o submit= must be 'service' or 'rest', got {self.mode!r}")
        self.job_type = job_type
        self.principal = ctx.principal
        self._client: Any = None
        if self.mode == "rest":
            from django.test import Client
            from rest_framework.authtoken.models import Token

            token, _ = Token.objects.get_or_create(user=self.principal)
            self._client = Client(HTTP_AUTHORIZATION=f"Token {token.key}")

    def __call__(self, *, session_id: str, inputs: dict[str, Any]) -> str:
        if self.mode == "rest":
            body = {"job_type": self.job_type, "inputs": inputs, "session_id": session_id}
            response = self._client.post("/api/v1/jobs", data=json.dumps(body), content_type="application/json")
            if response.status_code != 202:
                raise RuntimeError(f"submit answered {response.status_code}: {response.content[:300]!r}")
            return str(response.json()["job_id"])
        from jobs.models import JobStatus
        from jobs.services.submit import SubmitSpec, job_submit

        result = job_submit(principal=self.principal,
                            spec=SubmitSpec(job_type=self.job_type, inputs=inputs, session_id=session_id))
        if result.job.status != JobStatus.QUEUED:
            raise RuntimeError(f"job {result.job.id} was not admitted: {result.job.status} {result.job.reason}")
        return result.job.id


def session_names(ctx: Ctx, prefix: str) -> list[str]:
    """The agent sessions a scenario spreads its jobs over, round-robin (``-o sessions=N``).

    The platform caps each session's in-flight jobs (fair share, JOBS_SESSION_MAX_CONCURRENCY);
    with enough sessions that per-session cap does not bind and the figure is the platform's
    capacity. ``-o sessions=1`` shows one session flooding the platform instead.
    """
    count = int(ctx.options.get("sessions", str(DEFAULT_SESSIONS)))
    if count < 1:
        raise ValueError("-o sessions= must be >= 1")
    return [f"{prefix}-{i:03d}" for i in range(count)]


def terminal_count(sessions: Sequence[str]) -> int:
    from jobs.models import TERMINAL_STATUSES, Job

    return Job.objects.filter(session_id__in=list(sessions), status__in=list(TERMINAL_STATUSES)).count()


def status_counts(sessions: Sequence[str]) -> dict[str, int]:
    from django.db.models import Count

    from jobs.models import Job

    return {row["status"]: row["n"] for row in
            Job.objects.filter(session_id__in=list(sessions)).values("status").annotate(n=Count("id"))}


def governed_warmup(ctx: Ctx, submit: Callable[..., str], *, count: int = WARMUP) -> None:
    sessions = [f"bench-warmup-{i}" for i in range(count)]
    for i, session in enumerate(sessions):
        submit(session_id=session, inputs={"warmup": i})
    if not wait_until(lambda: terminal_count(sessions) >= count, timeout_s=60, interval_s=0.1):
        raise RuntimeError(f"governed warm-up did not finish: {status_counts(sessions)}")


def bare_warmup(ctx: Ctx, *, count: int = WARMUP) -> None:
    client = ctx.redis()
    for _ in range(count):
        bare_app.publish("warmup")
    if not wait_until(lambda: bare_app.count_results(client, "warmup") >= count, timeout_s=60, interval_s=0.05):
        raise RuntimeError("bare warm-up did not finish")


def wait_with_progress(ctx: Ctx, done: Callable[[], int], total: int, *, timeout_s: float,
                       interval_s: float = 0.1, every_s: float = 10.0) -> int:
    """Poll ``done()`` until it reaches ``total`` or ``timeout_s`` passes; log progress now and then."""
    deadline = time.monotonic() + timeout_s
    next_log = time.monotonic() + every_s
    current = done()
    while current < total and time.monotonic() < deadline:
        time.sleep(interval_s)
        current = done()
        if time.monotonic() >= next_log:
            ctx.log(f"  {current}/{total} done")
            next_log += every_s
    return current
