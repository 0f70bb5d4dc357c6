"""What the jobs app needs from its add-ons, declared here and registered by them.

Jobs never imports an add-on. An app that provides human approval (``approvals``) implements
:class:`ApprovalGate` and calls :func:`approval_gate_register` from its ``AppConfig.ready``.
Every method runs in the caller's transaction, so a job moved to ``pending_approval`` and its
open request commit together — a job can never wait for a request nobody can see.

An app that reacts to jobs reaching a status somebody waits for (``webhooks``) implements
:class:`StatusObserver` and calls :func:`status_observer_register`; it is called in the
transaction of the move, so what it records commits (or rolls back) with the status.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from django.core.exceptions import ImproperlyConfigured
from django.dispatch import Signal

if TYPE_CHECKING:
    from jobs.models import Job


class ApprovalGate(Protocol):
    def open(self, *, job: Job, checkpoint: str, approvers: int) -> None:
        """Open the pending request for ``job`` (already ``pending_approval``) at ``checkpoint``."""

    def open_many(self, *, items: list[tuple[Job, str, int]]) -> None:
        """Open the requests of many new ``pending_approval`` jobs (``(job, checkpoint, approvers)``)
        at once; they were inserted in the caller's transaction (batch submit)."""

    def granted(self, *, job_id: str, checkpoint: str) -> bool:
        """Whether the review of ``job_id`` at ``checkpoint`` is done and still counts."""

    def close_for_jobs(self, *, job_ids: Iterable[str], now: datetime) -> None:
        """The jobs left ``pending_approval`` another way (a cancel): close their open requests."""

    def pending_by_session(self, *, principal_ids: list[int], session_ids: list[str]) -> dict[tuple[int, str], int]:
        """Open requests counted per (principal id, session id)."""

    def summary(self, *, job_id: str) -> dict[str, Any] | None:
        """The latest request of a job, as the job's API body shows it."""


class _NoApprovals:
    """Without an approvals app nothing can be approved: a job that needs a human cannot park."""

    def open(self, *, job: Job, checkpoint: str, approvers: int) -> None:
        raise ImproperlyConfigured("a job needs approval but no approvals app is installed")

    def open_many(self, *, items: list[tuple[Job, str, int]]) -> None:
        raise ImproperlyConfigured("a job needs approval but no approvals app is installed")

    def granted(self, *, job_id: str, checkpoint: str) -> bool:
        return False

    def close_for_jobs(self, *, job_ids: Iterable[str], now: datetime) -> None:
        return None

    def pending_by_session(self, *, principal_ids: list[int], session_ids: list[str]) -> dict[tuple[int, str], int]:
        return {}

    def summary(self, *, job_id: str) -> dict[str, Any] | None:
        return None


_gate: ApprovalGate = _NoApprovals()


def approval_gate_register(gate: ApprovalGate) -> None:
    global _gate
    _gate = gate


def approval_gate() -> ApprovalGate:
    return _gate


# Sent inside the transaction that moves a job to ``pending_approval``, just before its request
# opens (arguments: ``job``, ``checkpoint``). A receiver that raises aborts the move with it; the
# failure tests use it to kill a worker at exactly this point.
approval_opening = Signal()


def approval_open(*, job: Job, checkpoint: str, approvers: int) -> None:
    """Open the request for a job just moved to ``pending_approval``, in the same transaction."""
    approval_opening.send(sender=approval_open, job=job, checkpoint=checkpoint)
    _gate.open(job=job, checkpoint=checkpoint, approvers=max(1, approvers))


class StatusObserver(Protocol):
    def reached(self, *, job_ids: Sequence[str], status: str) -> None:
        """``job_ids`` have just reached ``status`` (``pending_approval`` or a terminal status),
        in the transaction that moved them. Anything leaving the process goes through
        ``transaction.on_commit``; an exception here aborts the move with it."""


_observers: list[StatusObserver] = []


def status_observer_register(observer: StatusObserver) -> None:
    if observer not in _observers:
        _observers.append(observer)


def status_observers() -> tuple[StatusObserver, ...]:
    return tuple(_observers)


def approvals_open_bulk(*, items: list[tuple[Job, str, int]]) -> None:
    """:func:`approval_open` for many new jobs (``(job, checkpoint, approvers)``) in one go."""
    for job, checkpoint, _ in items:
        approval_opening.send(sender=approval_open, job=job, checkpoint=checkpoint)
    _gate.open_many(items=[(job, checkpoint, max(1, approvers)) for job, checkpoint, approvers in items])
