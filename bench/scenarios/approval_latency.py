"""Approval latency: a reviewer's approve → the next stage starting in a worker.

N ``demo.reviewed_store_write`` jobs are submitted and wait at ``before_commit``. They are then
approved one at a time (through ``approvals.services.approval_approve``, the service the API and
admin call) on an idle worker. For each, latency is ``JobRun.started_at`` of its ``finalize``
run (the claim, before governance re-check and handler) minus the wall time when the approve
call returned. The approve call publishes after its own commit, before returning, so a fast
worker can claim a few milliseconds *before* the call has returned: those samples are negative
and kept as they are. A second figure starts the clock just before the call.

There is no bare-Celery counterpart: bare Celery has no approvals.
"""

from __future__ import annotations

import time

from bench.harness import Ctx, Row, percentile, wait_until

ORDER = 60
DESCRIPTION = "approve → next stage start latency p50/p99 (target p50 <= 50 ms)"
TARGET_P50_MS = 50.0


def run(ctx: Ctx) -> list[Row]:
    from approvals.models import ApprovalRequest
    from approvals.services import approval_approve
    from governance.services import principal_ensure
    from jobs.models import Job, JobRun
    from jobs.services.submit import SubmitSpec, job_submit

    count = ctx.n_jobs(40, 10)
    agent = principal_ensure(username="bench-approval-agent", grants=["store:write"]).user
    reviewer = principal_ensure(username="bench-reviewer", grants=["approve:*"]).user
    after_return: list[float] = []
    after_call: list[float] = []
    with ctx.governed_worker(), ctx.beat():
        ids = [
            job_submit(principal=agent, spec=SubmitSpec(job_type="demo.reviewed_store_write",
                                                        inputs={"key": f"bench-appr-{i}", "data": {"i": i}},
                                                        session_id=f"bench-appr-{i % 4}")).job.pk
            for i in range(count)
        ]
        ctx.log(f"submitted {count}; waiting for all to reach review")
        if not wait_until(lambda: ApprovalRequest.objects.filter(job_id__in=ids, status="pending").count() == count,
                          timeout_s=120):
            raise RuntimeError("jobs did not all reach pending approval in 120 s")
        for job_id in ids:
            approval = ApprovalRequest.objects.get(job_id=job_id, status="pending")
            called = time.time()
            approval_approve(approval=approval, actor=reviewer, comment="bench")
            returned = time.time()
            runs = JobRun.objects.filter(job_id=job_id, stage="finalize")
            if not wait_until(runs.exists, timeout_s=30, interval_s=0.005):
                raise RuntimeError(f"{job_id} did not start finalize within 30 s")
            started = JobRun.objects.filter(job_id=job_id, stage="finalize").order_by("started_at").first()
            assert started is not None
            at = started.started_at.timestamp()
            after_return.append((at - returned) * 1000)
            after_call.append((at - called) * 1000)
        wait_until(lambda: Job.objects.filter(pk__in=ids, status="succeeded").count() == count, timeout_s=60)
    p50 = percentile(after_return, 50)
    p99 = percentile(after_return, 99)
    ctx.extra.update({"approvals": count, "after_return_ms": after_return, "after_call_ms": after_call})
    return [
        Row("approve return→start p50", p50, None, unit="ms", target=f"<= {TARGET_P50_MS:g} ms",
            met=p50 is not None and p50 <= TARGET_P50_MS),
        Row("approve return→start p99", p99, None, unit="ms"),
        Row("approve call→start p50", percentile(after_call, 50), None, unit="ms"),
        Row("approve call→start p99", percentile(after_call, 99), None, unit="ms"),
    ]
