"""Error classes a handler raises (or that the platform maps third-party exceptions to)."""

from __future__ import annotations


class JobError(Exception):
    """Base of the classified errors."""


class TransientError(JobError):
    """Worth retrying: the same call may succeed later (connection reset, 429, 5xx)."""


class PermanentError(JobError):
    """Retrying cannot help (validation failed, 4xx); the job is dead-lettered at once."""


class PolicyViolation(JobError):
    """Governance refused execution (grant revoked, rule now blocks, scope lock)."""


class JobCancelled(Exception):
    """Raised by ``ctx.check_cancelled()`` when a cancel was requested; not an error."""


class UnknownJobType(KeyError):
    pass
