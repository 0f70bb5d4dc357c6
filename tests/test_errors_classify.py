"""classify_error: the default mapping of exceptions to error classes, and a job type's own."""

from __future__ import annotations

import io
import urllib.error
from typing import Any

import jsonschema
import pytest
from celery.exceptions import SoftTimeLimitExceeded

from jobs.errors import PermanentError, PolicyViolation, TransientError
from jobs.models import ErrorClass
from jobs.registry import JobType, RetryPolicy
from jobs.worker.runner import classify_error


def _http_error(code: int) -> urllib.error.HTTPError:
    return urllib.error.HTTPError("http://x", code, "status", {}, io.BytesIO())  # type: ignore[arg-type]


class _Response:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


class _LibraryHttpError(Exception):
    """Shaped like requests.HTTPError / httpx.HTTPStatusError: the status is on .response."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.response = _Response(status_code)


class _VendorError(Exception):
    pass


class _VendorQuotaError(_VendorError):
    pass


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TransientError("x"), ErrorClass.TRANSIENT),
        (PermanentError("x"), ErrorClass.PERMANENT),
        (PolicyViolation("x"), ErrorClass.POLICY_VIOLATION),
        (SoftTimeLimitExceeded(), ErrorClass.TIMEOUT),
        (ConnectionResetError(), ErrorClass.TRANSIENT),
        (ConnectionRefusedError(), ErrorClass.TRANSIENT),
        (TimeoutError(), ErrorClass.TRANSIENT),
        (urllib.error.URLError("unreachable"), ErrorClass.TRANSIENT),
        (_http_error(429), ErrorClass.TRANSIENT),
        (_http_error(500), ErrorClass.TRANSIENT),
        (_http_error(503), ErrorClass.TRANSIENT),
        (_http_error(400), ErrorClass.PERMANENT),
        (_http_error(404), ErrorClass.PERMANENT),
        (_http_error(422), ErrorClass.PERMANENT),
        (_LibraryHttpError(502), ErrorClass.TRANSIENT),
        (_LibraryHttpError(429), ErrorClass.TRANSIENT),
        (_LibraryHttpError(403), ErrorClass.PERMANENT),
        (jsonschema.ValidationError("bad"), ErrorClass.PERMANENT),
        (ValueError("bad"), ErrorClass.PERMANENT),
        (KeyError("k"), ErrorClass.PERMANENT),
        (_VendorError("?"), ErrorClass.TRANSIENT),
        (RuntimeError("?"), ErrorClass.TRANSIENT),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_defaults(exc: BaseException, expected: str) -> None:
    # when an exception is classified with no job type
    # then it gets the documented default class
    assert classify_error(exc, None) == expected


def test_unknown_is_transient_unless_the_type_says_otherwise() -> None:
    # given two job types that differ only in how they treat unknown exceptions
    class Lenient(JobType):
        name = "t.lenient"

    class Strict(JobType):
        name = "t.strict"
        retry = RetryPolicy(unknown_is_transient=False)

    # then an exception nobody classified is transient for one, permanent for the other
    assert classify_error(_VendorError(), Lenient()) == ErrorClass.TRANSIENT
    assert classify_error(_VendorError(), Strict()) == ErrorClass.PERMANENT


def test_retry_policy_lists_take_precedence_over_defaults() -> None:
    # given a type that calls a vendor whose quota error is worth retrying but whose 5xx is not
    class Vendor(JobType):
        name = "t.vendor"
        retry = RetryPolicy(transient=(_VendorQuotaError, ValueError), permanent=(_LibraryHttpError,))

    vendor = Vendor()
    # then its lists win over the defaults, subclasses included
    assert classify_error(_VendorQuotaError(), vendor) == ErrorClass.TRANSIENT
    assert classify_error(ValueError("normally permanent"), vendor) == ErrorClass.TRANSIENT
    assert classify_error(_LibraryHttpError(503), vendor) == ErrorClass.PERMANENT
    # and anything it does not list keeps the default
    assert classify_error(ConnectionResetError(), vendor) == ErrorClass.TRANSIENT


def test_classify_error_hook_wins_and_none_falls_back() -> None:
    # given a type with its own classifier for one third-party exception
    class Own(JobType):
        name = "t.own"
        retry = RetryPolicy(transient=(_VendorError,))

        def classify_error(self, exc: BaseException) -> str | None:
            if isinstance(exc, _VendorQuotaError):
                return ErrorClass.PERMANENT
            return None

    own = Own()
    # then the hook decides what it knows, and the policy lists / defaults decide the rest
    assert classify_error(_VendorQuotaError(), own) == ErrorClass.PERMANENT
    assert classify_error(_VendorError(), own) == ErrorClass.TRANSIENT
    assert classify_error(TimeoutError(), own) == ErrorClass.TRANSIENT


def test_dead_letter_triggers_quarantine_at_once() -> None:
    # given a type that names an exception as a dead-letter trigger
    class Guarded(JobType):
        name = "t.guarded"
        dead_letter_on = (ConnectionResetError,)

    # then that exception is permanent even though it is a connection error
    assert classify_error(ConnectionResetError(), Guarded()) == ErrorClass.PERMANENT


def test_error_classes_are_one_vocabulary() -> None:
    # then the stored classes are exactly the documented ones (docs/reliability.md)
    values: set[Any] = set(ErrorClass.values)
    assert values == {
        "transient", "permanent", "policy_violation", "timeout", "retries_exhausted",
        "worker_lost", "poison", "cancelled",
    }


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 10])
def test_backoff_is_exponential_with_bounded_jitter(attempt: int) -> None:
    import random

    # given a policy with base 2 s, cap 30 s and 25 % jitter
    policy = RetryPolicy(backoff_base_s=2.0, backoff_max_s=30.0, jitter=0.25)
    base = min(30.0, 2.0 * 2 ** (attempt - 1))
    # when many delays are drawn for the same attempt
    rng = random.Random(attempt)
    delays = [policy.backoff_s(attempt, rng) for _ in range(200)]
    # then they stay within +/- 25 % of the capped exponential, and actually vary
    assert all(base * 0.75 <= d <= base * 1.25 for d in delays)
    assert max(delays) - min(delays) > base * 0.1
