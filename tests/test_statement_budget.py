"""What one job costs the database: statements and transactions per operation, pinned.

The platform's overhead over bare Celery is mostly round trips to PostgreSQL, so their number
per job is a budget that this file holds: a change that adds a statement to submit, to the
worker's claim or finish, or to a dispatch pass fails here, naming the statements it ran.

Counted with an ``execute_wrapper`` (every statement Django sends, savepoints included) and by
counting commits; a statement run outside a transaction is its own transaction. Publishing is
replaced by a no-op, so nothing reaches the broker and no worker of another test can claim
these jobs. Run with ``-s`` to print the statements.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from jobs.admission import dispatcher
from jobs.models import Job, JobStatus
from jobs.services.submit import SubmitSpec, job_submit
from jobs.worker.runner import stage_run

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _no_result_event_consumers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget of the platform as shipped: no job type with an ``on_finish`` task and no
    ``job_finished`` listener (other tests register both; with them, a finish reads the finished
    jobs' types once more, after commit)."""
    monkeypatch.setattr("jobs.completion.on_finish_tasks", dict)
    monkeypatch.setattr("jobs.completion.job_finished.has_listeners", lambda *a, **k: False)


@dataclass
class Tally:
    statements: list[str] = field(default_factory=list)
    transactions: int = 0
    commits: int = 0

    @property
    def count(self) -> int:
        return len(self.statements)

    def show(self, label: str) -> str:
        lines = [f"{label}: {self.count} statements, {self.transactions} transactions "
                 f"(~{self.count + 2 * self.commits} round trips with BEGIN/COMMIT)"]
        lines += [f"  {_short(s)}" for s in self.statements]
        return "\n".join(lines)


def _short(sql: str) -> str:
    sql = re.sub(r"\s+", " ", sql).strip()
    return sql[:110] + ("…" if len(sql) > 110 else "")


@contextmanager
def tally() -> Iterator[Tally]:
    """Record the statements and transactions of the block on the default connection.

    A transaction is a commit, or a statement executed in autocommit mode (its own implicit
    transaction). Savepoints count as statements: each one is a round trip.
    """
    result = Tally()
    original_commit = connection.commit

    def counting_commit() -> None:
        result.transactions += 1
        result.commits += 1
        original_commit()

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        result.statements.append(sql)
        if connection.get_autocommit():
            result.transactions += 1
        return execute(sql, params, many, context)

    connection.ensure_connection()
    connection.commit = counting_commit  # type: ignore[method-assign]
    try:
        with connection.execute_wrapper(wrapper):
            yield result
    finally:
        del connection.commit  # back to the class's method


@pytest.fixture(autouse=True)
def no_publish(monkeypatch: pytest.MonkeyPatch) -> None:
    """Admission marks rows as usual; the broker is never touched."""
    monkeypatch.setattr(dispatcher, "publish", lambda admitted: [])


def _submit(principal: Any, job_type: str = "demo.noop", inputs: dict[str, Any] | None = None,
            **kw: Any) -> Job:
    spec = SubmitSpec(job_type=job_type, inputs=inputs if inputs is not None else {}, session_id="s-budget", **kw)
    return job_submit(principal=principal.user, spec=spec).job


def _warm(principal: Any) -> None:
    """One job end to end first, so per-process caches (registry, content types) are filled as in
    a long-running worker."""
    job = _submit(principal)
    stage_run(**_message(job.id))


def _message(job_id: str) -> dict[str, Any]:
    """The stage message the dispatcher sent for ``job_id`` (admitting it by hand if it did not)."""
    job = Job.objects.get(pk=job_id)
    token = job.dispatch_token
    if not token:
        token = "tok-budget"
        Job.objects.filter(pk=job_id).update(dispatch_token=token, dispatched_at=timezone.now())
    return {"job_id": job_id, "stage": job.stage, "token": token, "worker": "w-budget"}


def _fill_buffer(principal: Any, settings: Any) -> None:
    """The platform under load: the unclaimed buffer is full (two published messages waiting in
    another session), so a request for a dispatch pass only counts."""
    settings.JOBS_MAX_UNCLAIMED = 2
    now = timezone.now()
    Job.objects.bulk_create([
        Job(session_id="s-elsewhere", principal=principal.user, job_type="demo.noop", scope="demo",
            dispatched_at=now + timedelta(minutes=5), dispatch_token="waiting")  # counted as fresh
        for _ in range(2)
    ])


# Budgets (statements, transactions), as measured. Lower them when a change saves a round trip;
# raising one needs a reason in the commit message. BEGIN and COMMIT are not statements here; a
# statement outside a transaction counts as one.
SUBMIT_UNDER_LOAD = (4, 2)  # governance version; one transaction: insert, stamp, the room count (no pass)
SUBMIT_IDLE = (11, 9)  # the same, then the pass that admits it (see DISPATCH_ONE)
DISPATCH_ONE = (7, 7)  # NEXT, RUN; counts; job-type controls; fair-share candidates; lock + mark; unlock
SINGLE_STAGE = (9, 2)  # two transactions: claim (job read with the governance version, update, stamp, run);
#                        finish (update, stamp, the webhook observer's callback read, run, the room count)
TWO_STAGE = (21, 7)  # both stages (claim, finish), and the handlers' own reads and effect transaction


def _check(label: str, got: Tally, budget: tuple[int, int]) -> None:
    print("\n" + got.show(label))
    assert got.count <= budget[0] and got.transactions <= budget[1], got.show(label)


def test_submit_under_load(principal: Any, settings: Any) -> None:
    _warm(principal)
    _fill_buffer(principal, settings)
    with tally() as t:
        job = _submit(principal)
    assert Job.objects.get(pk=job.id).dispatched_at is None  # waits in the database for room
    _check("submit under load (buffer full: no pass)", t, SUBMIT_UNDER_LOAD)


def test_submit_idle(principal: Any) -> None:
    _warm(principal)
    with tally() as t:
        job = _submit(principal)
    assert Job.objects.get(pk=job.id).dispatched_at is not None  # the pass after commit admitted it
    _check("submit on an idle platform (with the pass that admits it)", t, SUBMIT_IDLE)


def test_dispatch_pass_admitting_one_job(principal: Any) -> None:
    _warm(principal)
    job = _submit(principal, run_after=timezone.now() + timedelta(hours=1))
    Job.objects.filter(pk=job.id).update(run_after=timezone.now() - timedelta(seconds=1))
    with tally() as t:
        admitted = dispatcher.dispatch_kick(force=True)
    assert admitted == 1
    _check("dispatch pass admitting one job", t, DISPATCH_ONE)


def test_single_stage_run_statements(principal: Any, settings: Any) -> None:
    _warm(principal)
    job = _submit(principal)
    message = _message(job.id)
    _fill_buffer(principal, settings)
    with tally() as t:
        outcome = stage_run(**message)
    assert outcome.outcome == "succeeded", outcome
    _check("single-stage run under load (demo.noop execute)", t, SINGLE_STAGE)


def test_two_stage_run_statements(principal: Any, settings: Any) -> None:
    _warm(principal)
    job = _submit(principal, "demo.local_store_write", {"key": "budget", "data": {"a": 1}})
    execute_message = _message(job.id)
    _fill_buffer(principal, settings)
    with tally() as t1:
        first = stage_run(**execute_message)
    finalize_message = _message(job.id)
    with tally() as t2:
        second = stage_run(**finalize_message)
    t = Tally(t1.statements + t2.statements, t1.transactions + t2.transactions, t1.commits + t2.commits)
    assert (first.outcome, second.outcome) == ("advanced", "succeeded"), (first, second)
    assert Job.objects.get(pk=job.id).status == JobStatus.SUCCEEDED
    _check("two-stage run under load (execute + finalize of demo.local_store_write)", t, TWO_STAGE)
