"""The policy what-if over recorded jobs: reads job rows, hands them to ``governance.simulate``.

Governance sits below jobs and cannot read ``Job``; this module turns job rows into
``SubmissionRecord`` objects and calls the pure comparison. Read-only: nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone

from governance.models import PolicyRule
from governance.simulate import SimulationReport, SubmissionRecord, policy_compare
from jobs.errors import UnknownJobType
from jobs.models import Job
from jobs.registry import registry

# The window when the caller names none.
DEFAULT_WINDOW = timedelta(days=7)
_COLUMNS = ("id", "principal_id", "job_type", "scope", "risk", "inputs")


def job_submission_records(*, since: datetime, chunk_size: int = 2000) -> Iterator[SubmissionRecord]:
    """Every job created at or after ``since``, as the submission the policy saw, oldest first.

    Steps: (1) load the window's principals in one query; (2) stream the rows' submit-time
    fields with ``.iterator(chunk_size)`` (constant memory); (3) take each type's acknowledgment
    point and commit stage from the registry (a type no longer registered is marked so and
    skipped by the comparison). Scope and risk are those recorded on the job; inputs are the
    stored inputs (secret fields removed, redacted fields replaced).
    """
    window = Job.objects.filter(created_at__gte=since)
    users = {u.pk: u for u in get_user_model().objects.filter(pk__in=window.values("principal_id"))}
    types: dict[str, tuple[str, bool] | None] = {}
    for job_id, principal_id, job_type, scope, risk, inputs in (
        window.order_by("created_at", "id").values_list(*_COLUMNS).iterator(chunk_size=chunk_size)
    ):
        if job_type not in types:
            try:
                jt = registry.get(job_type)
            except UnknownJobType:
                types[job_type] = None
            else:
                types[job_type] = (str(jt.ack), jt.has_commit())
        known = types[job_type]
        principal = users[principal_id]
        yield SubmissionRecord(
            job_id=job_id, principal=principal, principal_label=principal.get_username(), job_type=job_type,
            scope=scope, risk=risk, ack=known[0] if known else "none", has_commit=known[1] if known else False,
            inputs=inputs if isinstance(inputs, dict) else {}, registered=known is not None,
        )


def policy_simulate(*, draft_rules: list[PolicyRule], since: datetime | None = None) -> SimulationReport:
    """What ``draft_rules`` (unsaved or disabled rules) would have decided for the jobs since ``since``.

    ``since`` defaults to seven days ago. See ``governance.simulate.policy_compare``.
    """
    start = since if since is not None else timezone.now() - DEFAULT_WINDOW
    return policy_compare(draft_rules=draft_rules, records=job_submission_records(since=start), since=start)

