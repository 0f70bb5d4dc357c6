"""Factories for the suite, and the moves on a job that tests used to fake by hand.

- ``PrincipalFactory``: a principal as ``principal_ensure`` makes it (user, grants, API token).
- ``JobFactory``: a job envelope as ``job_submit`` writes it for the job type's registered
  defaults (scope, permissions, risk, first stage, attempt budget, runtime, policy decision),
  with its creation stamp, brought to the status asked for along legal transitions
  (``jobs.transitions``), one stamp each, so its chain verifies. ``JobFactory.create_bulk``
  writes many rows in one INSERT without stamps, for tests of what reads them in bulk.
- ``JobRunFactory``, ``PolicyRuleFactory``.
- ``admit(job)``: the job admitted as the dispatcher admits it, nothing published.
- ``claim(job)``: the job claimed as a worker claims it (run, lease), no handler run.
- ``advance(job, *statuses)``: an existing job moved on through ``statuses``, as the platform
  moves it.
"""

from __future__ import annotations

import secrets
from itertools import pairwise
from typing import Any

import factory
from django.db import transaction
from django.utils import timezone
from factory.django import DjangoModelFactory

from audit.events import Event
from governance.models import PolicyRule
from governance.policy import policy_evaluate
from governance.services import PrincipalResult, principal_ensure
from jobs.hooks import approval_gate
from jobs.models import Job, JobRun, JobStatus
from jobs.registry import JobType, registry
from jobs.transitions import check_legal, job_created_stamp, job_transition
from jobs.worker.runner import job_claim

DEFAULT_GRANTS = ("demo:*", "store:write", "net:call")

S = JobStatus

# How a job reaches each status from its creation, as the platform moves it.
PATH_TO: dict[str, tuple[str, ...]] = {
    S.QUEUED: (S.QUEUED,),
    S.BLOCKED: (S.BLOCKED,),
    S.PENDING_APPROVAL: (S.PENDING_APPROVAL,),
    S.RUNNING: (S.QUEUED, S.RUNNING),
    S.RETRY_SCHEDULED: (S.QUEUED, S.RUNNING, S.RETRY_SCHEDULED),
    S.SUCCEEDED: (S.QUEUED, S.RUNNING, S.SUCCEEDED),
    S.DEAD_LETTERED: (S.QUEUED, S.RUNNING, S.DEAD_LETTERED),
    S.CANCELLED: (S.QUEUED, S.CANCELLED),
}

EVENT_INTO: dict[str, str] = {
    S.RUNNING: Event.CLAIMED,
    S.RETRY_SCHEDULED: Event.RETRY_SCHEDULED,
    S.SUCCEEDED: Event.SUCCEEDED,
    S.DEAD_LETTERED: Event.DEAD_LETTERED,
    S.CANCELLED: Event.CANCELLED,
}

# Back to queued, the event says from where.
EVENT_REQUEUED: dict[str, str] = {
    S.RUNNING: Event.STAGE_COMPLETED,
    S.RETRY_SCHEDULED: Event.RETRY_DUE,
    S.DEAD_LETTERED: Event.REPLAYED,
}


def _step(job_id: str, prior: str, to: str) -> None:
    check_legal(prior, to)
    if S.PENDING_APPROVAL in (prior, to):
        # A review opens and closes with its request: go through the approvals services.
        raise NotImplementedError("into or out of pending_approval: use the approvals services")
    event = EVENT_REQUEUED[prior] if to == S.QUEUED else EVENT_INTO[to]
    moved = job_transition(job_id=job_id, to=to, allowed_from=[prior], event=event,
                           details={"error_class": "", "retry_count": 0})
    assert moved == prior, f"{job_id} is not {prior}"


class PrincipalFactory(factory.Factory[PrincipalResult]):
    """A principal (user, grants, token) made by ``governance.services.principal_ensure``."""

    class Meta:
        model = PrincipalResult

    username = factory.Sequence(lambda n: f"principal-{n}")
    grants: Any = DEFAULT_GRANTS

    @classmethod
    def _create(cls, model_class: Any, *args: Any, **kwargs: Any) -> PrincipalResult:
        grants = kwargs.pop("grants")
        return principal_ensure(username=kwargs.pop("username"), grants=list(grants), **kwargs)

    _build = _create  # a principal exists only in the database


def _job_type(o: Any) -> JobType:
    return registry.get(o.job_type)


def _decide(o: Any) -> dict[str, Any]:
    """The policy decision ``job_submit`` would record for this principal, type and inputs."""
    jt = _job_type(o)
    return policy_evaluate(
        principal=o.principal, job_type=jt.name, scope=jt.scope, risk=str(jt.risk), ack=jt.ack,
        has_commit=jt.has_commit(), inputs=o.inputs,
    ).as_dict()


class JobFactory(DjangoModelFactory[Job]):
    """A valid job envelope; ``status`` is reached along legal transitions, stamped.

    The chain is the one ``jobs.transitions`` writes (creation stamp, then one stamp per
    transition); no runs and no lease are made — use :func:`claim` for a job a worker holds.
    A ``pending_approval`` job gets its open approval request, as every such job has.
    ``admitted=True`` admits the created job (see :func:`admit`).
    """

    class Meta:
        model = Job
        skip_postgeneration_save = True

    principal = factory.LazyFunction(lambda: PrincipalFactory.create().user)
    session_id = factory.Sequence(lambda n: f"s-factory-{n}")
    job_type = "demo.noop"
    scope = factory.LazyAttribute(lambda o: _job_type(o).scope)
    permissions = factory.LazyAttribute(lambda o: list(_job_type(o).permissions))
    risk = factory.LazyAttribute(lambda o: str(_job_type(o).risk))
    inputs = factory.LazyFunction(dict)
    stage = factory.LazyAttribute(lambda o: _job_type(o).first_stage())
    max_attempts = factory.LazyAttribute(lambda o: _job_type(o).retry.max_attempts)
    max_runtime_s = factory.LazyAttribute(lambda o: _job_type(o).max_runtime_s)
    policy_decision = factory.LazyAttribute(_decide)
    status = S.QUEUED
    approval_checkpoint = factory.LazyAttribute(
        lambda o: "before_execute" if o.status == S.PENDING_APPROVAL else "")
    run_after = factory.LazyFunction(timezone.now)
    created_at = factory.LazyFunction(timezone.now)
    updated_at = factory.SelfAttribute("created_at")

    admitted = factory.PostGeneration(lambda job, create, extracted, **_: admit(job) if extracted else None)

    @classmethod
    def _create(cls, model_class: Any, *args: Any, **kwargs: Any) -> Job:
        first, *rest = PATH_TO[kwargs.pop("status")]
        kwargs.setdefault("submitted_status", first)
        if first == S.BLOCKED:  # refused at submit: terminal from the start, as job_submit writes it
            kwargs.setdefault("finished_at", kwargs["created_at"])
            kwargs.setdefault("error_class", "policy_violation")
        # One transaction: live workers and dispatchers see the job only in its final status.
        with transaction.atomic():
            job: Job = super()._create(model_class, *args, status=first, **kwargs)
            job_created_stamp(
                job=job, event=Event.BLOCKED if first == S.BLOCKED else Event.SUBMITTED,
                actor=f"principal:{job.principal.get_username()}",
                details={"policy": job.policy_decision, "session_id": job.session_id, "trace_id": job.trace_id},
            )
            if first == S.PENDING_APPROVAL:
                approval_gate().open(job=job, checkpoint=job.approval_checkpoint,
                                     approvers=max(1, int(job.policy_decision.get("approvers") or 1)))
            for prior, to in pairwise((first, *rest)):
                _step(job.id, prior, to)
        job.refresh_from_db()
        return job

    @classmethod
    def create_bulk(cls, n: int, **kwargs: Any) -> list[Job]:
        """``n`` rows written in one go, as given (no stamps, no transitions): for the paths
        that only read rows (the dispatcher, bulk cancel, the monitor) and for tests that write
        the stamps themselves."""
        first = cls.build(**kwargs)
        kwargs.setdefault("principal", first.principal)
        kwargs.setdefault("policy_decision", first.policy_decision)
        jobs = [first, *cls.build_batch(n - 1, **kwargs)]
        Job.objects.bulk_create(jobs, batch_size=1000)
        return jobs


class JobRunFactory(DjangoModelFactory[JobRun]):
    """One attempt of a job's current stage, still running."""

    class Meta:
        model = JobRun

    job = factory.SubFactory(JobFactory)
    stage = factory.SelfAttribute("job.stage")
    attempt = 1
    worker = "w-factory"


class PolicyRuleFactory(DjangoModelFactory[PolicyRule]):
    """A policy rule that matches every job type and allows it, unless told otherwise."""

    class Meta:
        model = PolicyRule

    name = factory.Sequence(lambda n: f"rule-{n + 1}")
    job_type = "*"
    decision = "allow"


def admit(job: Job | str, *, release: bool = False) -> str:
    """Admit a queued job as the dispatcher does (step 4 in ``jobs.admission.dispatcher``):
    ``dispatched_at`` now and a fresh random dispatch token, in one UPDATE guarded on
    ``queued``; return the token a genuine message for it carries.

    Nothing is published: the test sends (or forges) the messages it means to. ``run_after`` is
    left as it is, so a job held back from the live dispatcher by a far ``run_after`` stays out
    of its reach; ``release=True`` lets it pass now in the same UPDATE (so no dispatcher ever
    sees the job ready and not admitted), and its later stages are then dispatched as usual.
    """
    job_id = job if isinstance(job, str) else job.pk
    now, token = timezone.now(), secrets.token_urlsafe(16)
    fields: dict[str, Any] = {"dispatched_at": now, "dispatch_token": token}
    if release:
        fields["run_after"] = now
    marked = Job.objects.filter(pk=job_id, status=S.QUEUED).update(**fields)
    assert marked == 1, f"{job_id} is not queued: only a queued job can be admitted"
    if isinstance(job, Job):
        for name, value in fields.items():
            setattr(job, name, value)
    return token


def claim(job: Job | str, *, worker: str = "w-factory") -> JobRun:
    """Admit the job and claim its current stage as a worker does (``job_claim``: queued →
    running, a lease, a new run), without running any handler; return the run."""
    job_id = job if isinstance(job, str) else job.pk
    token = admit(job_id)
    stage = Job.objects.values_list("stage", flat=True).get(pk=job_id)
    claimed = job_claim(job_id=job_id, stage=stage, token=token, worker=worker)
    assert isinstance(claimed, tuple), claimed
    if isinstance(job, Job):
        job.refresh_from_db()
    return claimed[1]


def advance(job: Job | str, *statuses: str) -> None:
    """Move an existing job on through ``statuses``, in order, as the platform moves it: into
    ``running`` by the worker's claim (:func:`claim`: a run with its own id, a lease), every other
    step by the guarded transition with its stamp. An illegal step raises ``IllegalTransition``."""
    job_id = job if isinstance(job, str) else job.pk
    for to in statuses:
        prior = Job.objects.values_list("status", flat=True).get(pk=job_id)
        if to == S.RUNNING:
            claim(job_id)
        else:
            _step(job_id, prior, to)
    if isinstance(job, Job):
        job.refresh_from_db()
