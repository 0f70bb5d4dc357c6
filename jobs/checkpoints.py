"""The approval checkpoint rule, in one place.

A policy decision of ``require_approval`` names a checkpoint (:class:`governance.models.Checkpoint`):
``before_execute`` guards the execute stage (the agent work), ``before_commit`` guards the
finalize stage (the external write), ``both`` guards each. Submit, the stage that just finished
and the worker's re-check all ask :func:`checkpoint_before` which checkpoint, if any, stands
before a stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from governance.models import Checkpoint, Decision
from jobs.models import Stage

# The stage each checkpoint stands before.
GUARDED_STAGE: dict[str, str] = {
    Checkpoint.BEFORE_EXECUTE: Stage.EXECUTE,
    Checkpoint.BEFORE_COMMIT: Stage.FINALIZE,
}


def checkpoint_before(stage: str, *, decision: Mapping[str, Any]) -> str:
    """The checkpoint ``decision`` puts before ``stage`` (a ``Checkpoint`` value), or ``""``."""
    if decision.get("action") != Decision.REQUIRE_APPROVAL:
        return ""
    wanted = decision.get("checkpoint") or ""
    for checkpoint, guarded in GUARDED_STAGE.items():
        if guarded == stage and wanted in (checkpoint, Checkpoint.BOTH):
            return checkpoint
    return ""


def checkpoint_for_ack(*, has_commit: bool) -> str:
    """Where a human acknowledgment asked for by the client (``requires_human_ack``) goes: before
    the external write when the job type has one, else before the work itself."""
    return Checkpoint.BEFORE_COMMIT if has_commit else Checkpoint.BEFORE_EXECUTE
