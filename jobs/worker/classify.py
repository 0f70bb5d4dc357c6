"""Error classification: which exceptions are worth a retry, which go to the dead-letter queue."""

from __future__ import annotations

import socket
import urllib.error

import jsonschema
from celery.exceptions import SoftTimeLimitExceeded

from jobs.errors import PermanentError, PolicyViolation, TransientError
from jobs.models import ErrorClass
from jobs.registry import JobType


def classify_error(exc: BaseException, job_type: JobType | None) -> str:
    """Map an exception to an ErrorClass value (docs/reliability.md lists the defaults)."""
    if job_type is not None:
        own = job_type.classify_error(exc)
        if own:
            return own
        if job_type.dead_letter_on and isinstance(exc, job_type.dead_letter_on):
            return ErrorClass.PERMANENT
        if job_type.retry.permanent and isinstance(exc, job_type.retry.permanent):
            return ErrorClass.PERMANENT
        if job_type.retry.transient and isinstance(exc, job_type.retry.transient):
            return ErrorClass.TRANSIENT
    if isinstance(exc, SoftTimeLimitExceeded):
        return ErrorClass.TIMEOUT
    if isinstance(exc, PolicyViolation):
        return ErrorClass.POLICY_VIOLATION
    if isinstance(exc, PermanentError):
        return ErrorClass.PERMANENT
    if isinstance(exc, TransientError):
        return ErrorClass.TRANSIENT
    if isinstance(exc, urllib.error.HTTPError):
        return ErrorClass.TRANSIENT if exc.code == 429 or exc.code >= 500 else ErrorClass.PERMANENT
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        return ErrorClass.TRANSIENT if status == 429 or status >= 500 else ErrorClass.PERMANENT
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, urllib.error.URLError)):
        return ErrorClass.TRANSIENT
    if isinstance(exc, (jsonschema.ValidationError, ValueError, TypeError, KeyError, LookupError)):
        return ErrorClass.PERMANENT
    if job_type is not None and not job_type.retry.unknown_is_transient:
        return ErrorClass.PERMANENT
    return ErrorClass.TRANSIENT
