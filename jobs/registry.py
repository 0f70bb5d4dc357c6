"""Job types: declared once in Python, registered by name.

A job type is a class. The platform instantiates it once per process and calls its stage
handlers with a :class:`jobs.worker.context.JobContext`::

    @register
    class UpdateContact(JobType):
        \"\"\"Update one CRM contact's fields.\"\"\"   # the mission
        name = "crm.update_contact"
        scope = "crm"
        permissions = ("crm:write",)
        risk = Risk.HIGH
        ack = AckPoint.BEFORE_COMMIT
        input_schema = {...}                          # JSON Schema
        def execute(self, ctx, inputs): return {"changes": ...}      # the proposal
        def commit(self, ctx, proposal): return {"written": ...}     # the effect

Stages run in order: ``intake`` (only if the type overrides it), ``execute`` (always),
``finalize`` (only if the type overrides ``commit``).
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from django.conf import settings

from jobs.errors import UnknownJobType

if TYPE_CHECKING:
    from jobs.worker.context import JobContext


class Risk(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class AckPoint(StrEnum):
    NONE = "none"
    BEFORE_EXECUTE = "before_execute"
    BEFORE_COMMIT = "before_commit"
    BOTH = "both"


@dataclass(frozen=True)
class RetryPolicy:
    """Retries wait in the database (``run_after``), never as Celery ETA messages."""

    max_attempts: int = 3
    backoff_base_s: float = 2.0
    backoff_max_s: float = 300.0
    jitter: float = 0.25  # +/- fraction of the delay
    # Extra exception types this job type treats as transient / permanent.
    transient: tuple[type[BaseException], ...] = ()
    permanent: tuple[type[BaseException], ...] = ()
    # What an exception nobody classified counts as until the attempt budget runs out.
    unknown_is_transient: bool = True
    # Whether running out of time is worth another attempt.
    retry_timeouts: bool = True

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Exponential backoff with jitter for the retry after failed attempt ``attempt`` (1-based)."""
        base = min(self.backoff_max_s, self.backoff_base_s * (2 ** max(0, attempt - 1)))
        spread = base * self.jitter
        return max(0.0, base + (rng or random).uniform(-spread, spread))


class JobType:
    name: ClassVar[str]
    scope: ClassVar[str] = "default"
    permissions: ClassVar[tuple[str, ...]] = ()
    risk: ClassVar[Risk] = Risk.LOW
    ack: ClassVar[AckPoint] = AckPoint.NONE
    max_runtime_s: ClassVar[int] = 60
    retry: ClassVar[RetryPolicy] = RetryPolicy()
    input_schema: ClassVar[dict[str, Any]] = {"type": "object"}
    # Input fields needed for execution but never shown: stored encrypted, given only to handlers.
    secret_fields: ClassVar[tuple[str, ...]] = ()
    # Dead-letter triggers: exception types that quarantine at once, whatever the budget.
    dead_letter_on: ClassVar[tuple[type[BaseException], ...]] = ()
    # Whether ``commit`` goes through the effect ledger (exactly-once) — see effect_key().
    idempotent_commit: ClassVar[bool] = True
    # A Celery task name sent ``(job_id, status)`` after the job's terminal transition commits,
    # to the queue that name routes to (CELERY_TASK_ROUTES, JOBS_EXTRA_TASK_ROUTES) — for
    # downstream Celery apps; see jobs/completion.py. Empty: none.
    on_finish: ClassVar[str] = ""

    # --- stage handlers -------------------------------------------------------------------
    def intake(self, ctx: JobContext, inputs: dict[str, Any]) -> dict[str, Any]:
        return inputs

    def execute(self, ctx: JobContext, inputs: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def commit(self, ctx: JobContext, proposal: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self, proposal: dict[str, Any] | None) -> dict[str, Any]:
        """What a reviewer sees: summary, evidence, expected impact, rollback path."""
        return {
            "summary": (self.__doc__ or self.name).strip().splitlines()[0],
            "evidence": [],
            "impact": "",
            "rollback": "none",
        }

    def rollback(self, ctx: JobContext, committed: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def effect_key(self, ctx: JobContext, proposal: dict[str, Any]) -> str:
        """The key of the commit's effect in the ledger; by default one effect per job."""
        return ctx.job_id

    def classify_error(self, exc: BaseException) -> str | None:
        """Return an ErrorClass value for ``exc`` or None to use the defaults."""
        return None

    # --- derived --------------------------------------------------------------------------
    @classmethod
    def has_intake(cls) -> bool:
        return cls.intake is not JobType.intake

    @classmethod
    def has_commit(cls) -> bool:
        return cls.commit is not JobType.commit

    @classmethod
    def stages(cls) -> list[str]:
        stages = ["intake"] if cls.has_intake() else []
        stages.append("execute")
        if cls.has_commit():
            stages.append("finalize")
        return stages

    @classmethod
    def first_stage(cls) -> str:
        return cls.stages()[0]

    @classmethod
    def next_stage(cls, stage: str) -> str | None:
        stages = cls.stages()
        index = stages.index(stage)
        return stages[index + 1] if index + 1 < len(stages) else None

    @classmethod
    def mission(cls) -> str:
        return (cls.__doc__ or "").strip()


@dataclass
class Registry:
    types: dict[str, type[JobType]] = field(default_factory=dict)
    instances: dict[str, JobType] = field(default_factory=dict)
    loaded: bool = False

    def register(self, cls: type[JobType]) -> type[JobType]:
        name = getattr(cls, "name", None)
        if not name or not isinstance(name, str):
            raise TypeError(f"{cls.__name__} must set a string `name`")
        existing = self.types.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"job type {name!r} is already registered by {existing.__qualname__}")
        self.types[name] = cls
        self.instances[name] = cls()
        return cls

    def load(self, modules: Iterable[str] | None = None) -> None:
        for module in modules if modules is not None else settings.JOBS_TYPE_MODULES:
            importlib.import_module(module)
        self.loaded = True

    def get(self, name: str) -> JobType:
        if not self.loaded:
            self.load()
        try:
            return self.instances[name]
        except KeyError:
            raise UnknownJobType(name) from None

    def all(self) -> dict[str, type[JobType]]:
        if not self.loaded:
            self.load()
        return dict(self.types)


registry = Registry()


def register(cls: type[JobType]) -> type[JobType]:
    return registry.register(cls)
