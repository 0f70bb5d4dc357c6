"""Job types that misbehave on purpose, for the failure-semantics tests only.

They are not shipped with the platform (a job type that kills its worker has no place in a
product registry): the tests import this module, and the workers they start load it through
``JOBS_TYPE_MODULES`` (see :data:`WORKER_ENV`).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.dispatch import receiver

from examples.job_types import ReviewedStoreWrite
from jobs.hooks import approval_opening
from jobs.registry import JobType, RetryPolicy, register
from jobs.worker.context import JobContext

WORKER_ENV = {"JOBS_TYPE_MODULES": "examples.job_types,tests.fault_types"}


@register
class IgnoresSoftLimit(JobType):
    """Sleep ``sleep_s`` seconds, swallowing Celery's soft time limit, so the hard limit kills it."""

    name = "test.ignores_soft_limit"
    scope = "demo"
    permissions = ("demo:run",)
    max_runtime_s = 30
    retry = RetryPolicy(max_attempts=2, backoff_base_s=0.2, backoff_max_s=1.0)
    input_schema = {"type": "object", "properties": {"sleep_s": {"type": "number"}}}

    def execute(self, ctx: JobContext, inputs: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + float(inputs.get("sleep_s", 60))
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except SoftTimeLimitExceeded:
                ctx.record_tool_call("ignored_soft_limit")
        return {"finished": True}


@register
class NoTimeoutRetry(IgnoresSoftLimit):
    """Like the above, but running out of time is final for this type."""

    name = "test.no_timeout_retry"
    retry = RetryPolicy(max_attempts=3, backoff_base_s=0.2, retry_timeouts=False)


@register
class KillsOwnWorker(JobType):
    """SIGKILL the worker process that runs it, every time: a poison message."""

    name = "test.kills_own_worker"
    scope = "demo"
    permissions = ("demo:run",)
    max_runtime_s = 30
    # A budget larger than JOBS_MAX_CLAIMS_PER_STAGE, so poison detection is what stops it.
    retry = RetryPolicy(max_attempts=50, backoff_base_s=0.1, backoff_max_s=0.5)
    input_schema = {"type": "object"}

    def execute(self, ctx: JobContext, inputs: dict[str, Any]) -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(5)  # never reached
        return {}


@register
class DiesBeforeApprovalOpens(ReviewedStoreWrite):
    """A reviewed write whose first run kills its worker process at the moment the job moves to
    ``pending_approval``, before its request opens (see :func:`_die_before_approval_opens`)."""

    name = "test.dies_before_approval_opens"


@receiver(approval_opening)
def _die_before_approval_opens(sender: Any, job: Any, checkpoint: str, **_: Any) -> None:
    """Fault hook: ``jobs.hooks.approval_opening`` is sent inside the transaction that moves a
    job to ``pending_approval``, just before its request opens. Dying here is the worst moment
    for a worker: the test then checks that no job waits without an open request."""
    if job.job_type == DiesBeforeApprovalOpens.name and job.attempts <= 1:
        os.kill(os.getpid(), signal.SIGKILL)
