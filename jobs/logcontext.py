"""Which job a process is working on, for its log lines; and the W3C ``traceparent`` header.

Deliberately free of models: ``settings.LOGGING`` names :class:`JobContextFilter`, and logging is
configured before the apps are loaded.

A worker binds the job of the message it runs (``bind_message`` from the task's ``trace_id``
header, then ``bind_run`` once the claim succeeded); every log record of that task then carries
``job_id``, ``trace_id`` and ``run_id`` (the filter adds them), and the transition log line
(``jobs.observe``) takes the job type, stage and run start from here instead of reading the row.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass
class BoundJob:
    job_id: str
    trace_id: str = ""
    job_type: str = ""
    run_id: str = ""
    stage: str = ""
    attempt: int | None = None
    run_started_at: datetime | None = None


_bound: ContextVar[BoundJob | None] = ContextVar("jobs_bound_job", default=None)


def bind_message(*, job_id: str, trace_id: str = "") -> None:
    """A stage message for ``job_id`` is being handled (its trace id came in the message headers)."""
    _bound.set(BoundJob(job_id=job_id, trace_id=trace_id))


def bind_run(*, job: Any, run: Any) -> None:
    """The claim succeeded: remember the job's type and trace and the run (id, stage, start)."""
    _bound.set(BoundJob(job_id=job.id, trace_id=job.trace_id, job_type=job.job_type, run_id=run.run_id,
                        stage=run.stage, attempt=run.attempt, run_started_at=run.started_at))


def unbind() -> None:
    _bound.set(None)


def bound_job(job_id: str | None = None) -> BoundJob | None:
    """The bound job, if any (and only if it is ``job_id`` when one is given)."""
    bound = _bound.get()
    if bound is None or (job_id is not None and bound.job_id != job_id):
        return None
    return bound


class JobContextFilter(logging.Filter):
    """Adds ``job_id``, ``trace_id`` and ``run_id`` of the bound job to every record lacking them."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _bound.get()
        if bound is not None:
            for name in ("job_id", "trace_id", "run_id"):
                if not hasattr(record, name):
                    setattr(record, name, getattr(bound, name))
        return True


# version "-" trace-id "-" parent-id "-" flags, lowercase hex (https://www.w3.org/TR/trace-context/).
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def trace_id_from_traceparent(header: str | None) -> str:
    """The 32-hex trace id of a valid W3C ``traceparent`` header, or "" for a missing or invalid one.

    Invalid per the spec: version ``ff``, an all-zero trace id or parent id, anything but lowercase
    hex, and (for version 00) anything after the flags. A later version may append fields.
    """
    match = _TRACEPARENT.match((header or "").strip())
    if match is None:
        return ""
    version, trace_id, parent_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return ""
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return ""
    return trace_id
