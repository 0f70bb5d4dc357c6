"""CPU per job in one process, without a broker: what the platform's own code costs.

``python -m bench.cpu_per_job [N]`` (default 500) on the bench database: submits N ``demo.noop``
jobs through ``job_submit``, then plays the worker — every message the dispatcher publishes is
recorded instead of sent (``publish`` replaced), and ``stage_run`` is called for each in order,
as a worker would, until all N succeeded. Reported per job: CPU seconds of this process and of
its PostgreSQL backend (``/proc``), for the submit phase and the worker phase, and the number of
statements. Celery, Redis and the network are left out on purpose: these figures hardly move
with other load on the machine, so two versions of the code can be compared on a busy host.
"""

from __future__ import annotations

import collections
import os
import sys
import time
from typing import Any

from bench.harness import _CLK_TCK, configure_environment, django_setup, ensure_database


def _backend_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 500
    configure_environment()
    django_setup()
    ensure_database()
    from django.db import connection

    from bench.harness import BENCH_USERNAME, prepare_database, purge_database
    from jobs.admission import dispatcher
    from jobs.models import Job, JobStatus
    from jobs.services.submit import SubmitSpec, job_submit
    from jobs.worker.runner import stage_run

    prepare_database()
    purge_database()
    from django.contrib.auth import get_user_model

    principal = get_user_model().objects.get(username=BENCH_USERNAME)
    broker: collections.deque[Any] = collections.deque()

    def record(admitted: list[Any]) -> list[str]:
        broker.extend(admitted)
        return []

    dispatcher.publish = record  # type: ignore[assignment]
    statements = [0]
    timings: dict[str, list[float]] = collections.defaultdict(list)

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        statements[0] += 1
        t = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            timings[" ".join(sql.split())[:70]].append(time.perf_counter() - t)

    def submit(i: int, session: str) -> None:
        job_submit(principal=principal, spec=SubmitSpec(job_type="demo.noop", inputs={"i": i}, session_id=session))

    def drain(limit: int) -> int:
        done = 0
        while broker and done < limit:
            m = broker.popleft()
            outcome = stage_run(job_id=m.job_id, stage=m.stage, token=m.token, worker="cpu-per-job")
            done += outcome.outcome == "succeeded"
        return done

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = int(cursor.fetchone()[0])
    # Warm-up: imports, caches, prepared plans.
    for i in range(20):
        submit(i, f"warm-{i}")
    while broker:
        drain(1000)
        dispatcher.dispatch_ready()

    sessions = [f"cpu-{i:03d}" for i in range(100)]
    result: dict[str, float] = {}
    with connection.execute_wrapper(count):
        for phase in ("submit", "worker"):
            statements[0] = 0
            cpu0, db0, t0 = time.process_time(), _backend_cpu(backend), time.monotonic()
            if phase == "submit":
                for i in range(n):
                    submit(i, sessions[i % len(sessions)])
            else:
                left = n
                while left > 0:
                    if not broker:
                        dispatcher.dispatch_ready()  # the beat tick's backstop
                        if not broker:
                            break
                    left -= drain(left)
            result[f"{phase} python ms/job"] = 1000 * (time.process_time() - cpu0) / n
            result[f"{phase} postgres ms/job"] = 1000 * (_backend_cpu(backend) - db0) / n
            result[f"{phase} statements/job"] = statements[0] / n
            result[f"{phase} wall ms/job"] = 1000 * (time.monotonic() - t0) / n
    succeeded = Job.objects.filter(session_id__in=sessions, status=JobStatus.SUCCEEDED).count()
    print(f"jobs: {n} submitted, {succeeded} succeeded (pid {os.getpid()}, backend {backend})")
    for key, value in result.items():
        print(f"  {key:28s} {value:8.2f}")
    total = sum(v for k, v in result.items() if k.endswith(("python ms/job", "postgres ms/job")))
    print(f"  {'total CPU ms/job':28s} {total:8.2f}")
    if os.environ.get("BENCH_STATEMENTS"):
        print("statements by time spent waiting for them (ms per job, calls per job):")
        for sql, times in sorted(timings.items(), key=lambda kv: -sum(kv[1]))[:15]:
            print(f"  {1000 * sum(times) / n:7.2f} {len(times) / n:5.2f}  {sql}")
    return 0 if succeeded == n else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
