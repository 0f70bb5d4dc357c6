"""A job type with an ``on_finish`` task, and that task as a downstream Celery app would have it.

Loaded by the workers of the result-event test through ``JOBS_TYPE_MODULES`` (see
:data:`WORKER_ENV`); the route sends the task to a queue only the "downstream" worker consumes.
"""

from __future__ import annotations

from typing import Any

from celery import current_task, shared_task

from examples.job_types import Flaky
from jobs.registry import register

DOWNSTREAM_TASK = "tests.downstream.job_finished"
DOWNSTREAM_QUEUE = "downstream"
WORKER_ENV = {
    "JOBS_TYPE_MODULES": "examples.job_types,tests.fault_types,tests.finish_types",
    "JOBS_EXTRA_TASK_ROUTES": f"tests.downstream.*={DOWNSTREAM_QUEUE}",
}


@register
class FlakyWithResultEvent(Flaky):
    """demo.flaky that tells a downstream Celery app when it ends."""

    name = "test.flaky_with_result_event"
    on_finish = DOWNSTREAM_TASK


@shared_task(name=DOWNSTREAM_TASK, ignore_result=False)
def job_finished_downstream(job_id: str, status: str) -> dict[str, Any]:
    """What a downstream app would do: react to the end. Its result (stored by Celery's result
    backend) tells the test which worker ran it and with what."""
    return {"job_id": job_id, "status": status, "worker": current_task.request.hostname}
