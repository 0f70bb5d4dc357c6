"""The audit vocabulary: every stamp's ``event`` is one of these names.

One module so the names are greppable and a typo is an AttributeError, not a new event nobody
filters for. Stamps store the plain string (``Event`` is a ``StrEnum``), so existing trails and
exports read the same.
"""

from __future__ import annotations

from enum import StrEnum


class Event(StrEnum):
    # submit
    SUBMITTED = "submitted"
    BLOCKED = "blocked"
    # admission and the worker
    RETRY_DUE = "retry_due"
    CLAIMED = "claimed"
    CLAIM_REFUSED = "claim_refused"
    SCOPE_REFUSED = "scope_refused"
    STAGE_COMPLETED = "stage_completed"
    SUCCEEDED = "succeeded"
    RETRY_SCHEDULED = "retry_scheduled"
    DEAD_LETTERED = "dead_lettered"
    LEASE_EXPIRED = "lease_expired"
    EFFECT_REPLAYED = "effect_replayed"
    # control
    CANCEL_REQUESTED = "cancel_requested"
    CANCELLED = "cancelled"
    # approvals
    APPROVAL_REQUIRED = "approval_required"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_REQUEST_REPAIRED = "approval_request_repaired"
    APPROVAL_GRANTED = "approval_granted"
    APPROVED = "approved"
    APPROVAL_DENIED = "approval_denied"
    APPROVAL_EXPIRED = "approval_expired"
    # operators
    REPLAYED = "replayed"
    DISCARDED = "discarded"
    ROLLED_BACK = "rolled_back"
    # retention (on the ``retention`` chain)
    RETENTION_PURGE = "retention_purge"
