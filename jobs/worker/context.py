"""What a stage handler receives: ids, progress, heartbeat, cancellation and a tool-call log."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from jobs.errors import JobCancelled
from jobs.models import Job, JobStatus
from jobs.wakeups import jobs_changed

logger = logging.getLogger("jobs.handler")


@dataclass
class JobContext:
    job_id: str
    run_id: str
    stage: str
    attempt: int
    session_id: str
    trace_id: str
    correlation_id: str
    conversation_id: str
    principal: str
    worker: str
    model_version: str = field(default_factory=lambda: settings.JOBS_MODEL_VERSION)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _last_progress: float = field(default=0.0, repr=False)

    # --- ids for logs ------------------------------------------------------------------
    @property
    def log_extra(self) -> dict[str, str]:
        return {
            "job_id": self.job_id,
            "run_id": self.run_id,
            "trace_id": self.trace_id,
            "correlation_id": self.correlation_id,
            "conversation_id": self.conversation_id,
            "session_id": self.session_id,
        }

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        return logging.LoggerAdapter(logger, self.log_extra)

    # --- progress and liveness ---------------------------------------------------------
    def progress(self, pct: float, message: str = "") -> None:
        """Record progress (0–100). Writes are throttled to one per 0.25 s except 100 %."""
        now = time.monotonic()
        if pct < 100 and now - self._last_progress < 0.25:
            return
        self._last_progress = now
        if Job.objects.filter(pk=self.job_id, current_run_id=self.run_id).update(
            progress_pct=max(0.0, min(100.0, float(pct))), progress_message=message[:500]
        ):
            jobs_changed([self.job_id])

    def heartbeat(self) -> None:
        """Renew the lease now (the monitor thread also does it on its own)."""
        renew_lease(self.job_id, self.run_id)

    # --- cancellation ------------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled(self.job_id)

    def request_cancel(self) -> None:
        self._cancel.set()

    # --- tool calls --------------------------------------------------------------------
    def record_tool_call(self, name: str, args: Any = None, result: Any = None) -> None:
        self.tool_calls.append(
            {"name": name, "args": args, "result": result, "at": timezone.now().isoformat()}
        )


def renew_lease(job_id: str, run_id: str) -> bool:
    now = timezone.now()
    return bool(
        Job.objects.filter(pk=job_id, status=JobStatus.RUNNING, current_run_id=run_id).update(
            lease_expires_at=now + timedelta(seconds=settings.JOBS_LEASE_S), heartbeat_at=now
        )
    )


class RunMonitor(threading.Thread):
    """Renews the lease and watches for cancellation while a handler runs.

    Polls every ``JOBS_CANCEL_POLL_S`` (so a cancel is seen within a second) and renews the lease
    every ``JOBS_HEARTBEAT_S``. If the job is no longer running under this run id (cancelled,
    reaped, taken over), it signals cancellation: the handler's work no longer counts.
    Uses its own database connection and closes it on exit.
    """

    def __init__(self, ctx: JobContext) -> None:
        super().__init__(name=f"monitor-{ctx.job_id}", daemon=True)
        self.ctx = ctx
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        last_beat = time.monotonic()
        try:
            while not self._stop_event.wait(settings.JOBS_CANCEL_POLL_S):
                try:
                    row = (
                        Job.objects.filter(pk=self.ctx.job_id)
                        .values("status", "current_run_id", "cancel_requested_at")
                        .first()
                    )
                    if (
                        row is None
                        or row["cancel_requested_at"] is not None
                        or row["status"] != JobStatus.RUNNING
                        or row["current_run_id"] != self.ctx.run_id
                    ):
                        self.ctx.request_cancel()
                    if time.monotonic() - last_beat >= settings.JOBS_HEARTBEAT_S:
                        renew_lease(self.ctx.job_id, self.ctx.run_id)
                        last_beat = time.monotonic()
                except Exception:  # a DB blip must not kill the monitor; the lease covers it
                    logger.warning("run monitor poll failed", exc_info=True, extra=self.ctx.log_extra)
                    close_old_connections()
        finally:
            connection.close()
