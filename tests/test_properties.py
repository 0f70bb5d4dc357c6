"""Property tests (hypothesis): the edge validator against an independent reference, the submit
endpoint under arbitrary bodies, and the transition table under any sequence of attempts."""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from audit.models import AuditStamp
from audit.selectors import audit_verify
from common.errors import DomainError
from common.validation import (
    INT32_MAX,
    check_identifier,
    check_json,
    check_text,
    int_param,
    json_loads,
    max_json_depth,
)
from jobs.models import Job, JobStatus
from jobs.services.submit import SubmitSpec, job_submit
from jobs.transitions import LEGAL, IllegalTransition, job_transition, jobs_transition_bulk

# --- an independent statement of the character rules ----------------------------------------

_EXTRA_BAD = {"\u2028", "\u2029", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}


def _bad_identifier_char(c: str) -> bool:
    return unicodedata.category(c) in ("Cc", "Cs") or c in _EXTRA_BAD


def _bad_text_char(c: str) -> bool:
    return c not in "\t\n\r" and _bad_identifier_char(c)


def _reference(value: Any, depth: int = 1) -> set[str]:
    """The codes check_json must raise for ``value`` (empty: it must accept it)."""
    reasons: set[str] = set()
    if isinstance(value, str):
        if any(_bad_text_char(c) for c in value):
            reasons.add("invalid_characters")
    elif isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            reasons.add("invalid_type")
    elif isinstance(value, dict):
        if depth > max_json_depth():
            reasons.add("too_deep")
        for key, child in value.items():
            if any(_bad_identifier_char(c) for c in key):
                reasons.add("invalid_characters")
            reasons |= _reference(child, depth + 1)
    elif isinstance(value, list):
        if depth > max_json_depth():
            reasons.add("too_deep")
        for child in value:
            reasons |= _reference(child, depth + 1)
    return reasons


_HOSTILE_CHARS = ["\x00", "\x01", "\x1b", "\x7f", "\x85", "\x9f", "\t", "\n", "\r", "\ud800", "\udfff",
                  "\u2028", "\u202e", "\u2067", "é", "🙂", "a"]
_text = st.text(alphabet=st.one_of(st.characters(), st.sampled_from(_HOSTILE_CHARS)), max_size=12)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), _text)


def _deep(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Values nested around the validator's depth limit."""
    def wrap(args: tuple[Any, int, bool]) -> Any:
        value, levels, as_list = args
        for _ in range(levels):
            value = [value] if as_list else {"k": value}
        return value
    return st.tuples(inner, st.integers(min_value=28, max_value=36), st.booleans()).map(wrap)


_json = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(_text, children, max_size=4),
    ),
    max_leaves=25,
)
_values = st.one_of(_json, _deep(_json))


def test_every_character_below_u3000_is_judged_as_the_reference_judges_it() -> None:
    # exhaustive where the rules live (controls, surrogates, separators, bidi), and then some
    for code in [*range(0x3000), *range(0xD7F0, 0xE010), 0xFEFF, 0x10FFFF]:
        c = chr(code)
        for check, bad in ((check_text, _bad_text_char), (check_identifier, _bad_identifier_char)):
            try:
                check(f"a{c}b", where="x")
            except DomainError as exc:
                assert bad(c) and exc.code == "invalid_characters", hex(code)
            else:
                assert not bad(c), hex(code)


_clean = st.text(alphabet=st.characters(categories=["L", "N", "P", "S", "Zs"]), max_size=10)


@settings(max_examples=300, deadline=None)
@given(_clean, st.one_of(st.sampled_from(_HOSTILE_CHARS), st.characters(codec=None)), _clean)
def test_a_string_is_refused_exactly_when_it_holds_a_bad_character(before: str, char: str, after: str) -> None:
    text = before + char + after
    expected = any(_bad_text_char(c) for c in text)
    try:
        check_json({"v": text})
    except DomainError as exc:
        assert expected and exc.code == "invalid_characters"
    else:
        assert not expected


@settings(max_examples=400, deadline=None)
@given(_values)
def test_check_json_accepts_exactly_what_the_reference_accepts(value: Any) -> None:
    expected = _reference(value)
    try:
        returned = check_json(value)
    except DomainError as exc:
        assert exc.code in expected, (exc.code, expected)
        assert exc.status == 400
    else:
        assert not expected, expected
        assert returned is value
        # and what it accepts is storable: strict JSON, UTF-8, no NUL escape for PostgreSQL
        encoded = json.dumps(value, allow_nan=False)
        encoded.encode("utf-8")
        assert "\\u0000" not in encoded


@settings(max_examples=300, deadline=None)
@given(_values)
def test_json_loads_round_trips_what_it_accepts_and_refuses_the_rest_with_a_code(value: Any) -> None:
    try:
        raw = json.dumps(value)
    except (ValueError, RecursionError):
        assume(False)
    try:
        decoded = json_loads(raw)
    except DomainError as exc:
        assert exc.code in {"invalid_characters", "too_deep", "invalid_type", "malformed_json"}
        assert _reference(value) or exc.code == "malformed_json"
    else:
        assert not _reference(value)
        assert json.dumps(decoded) == raw


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=30), st.integers().map(str), st.from_regex(r"\s*[+-]?\d{1,45}\s*")))
def test_int_param_is_an_integer_within_bounds_or_a_400(raw: str | None) -> None:
    try:
        value = int_param(raw, where="limit", default=50, minimum=1, maximum=500)
    except DomainError as exc:
        assert exc.code in {"invalid_type", "out_of_range"} and exc.status == 400
    else:
        assert 1 <= value <= 500
    try:
        offset = int_param(raw, where="offset", default=0, minimum=0, maximum=INT32_MAX)
    except DomainError:
        pass
    else:
        assert 0 <= offset <= INT32_MAX


# --- the submit endpoint under arbitrary bodies ---------------------------------------------

_field_values = st.one_of(
    _scalars, st.lists(_scalars, max_size=3), st.dictionaries(_text, _scalars, max_size=3),
    st.sampled_from(["demo.noop", "demo.local_store_write", "s-prop", "2026-11-25T12:00:00Z",
                     "9999-12-31T00:00:00Z", "http://169.254.169.254/x"]),
)
_bodies = st.one_of(
    st.dictionaries(
        st.sampled_from(["job_type", "inputs", "session_id", "idempotency_key", "priority", "run_after",
                         "constraints", "trace_id", "correlation_id", "conversation_id", "callback_url",
                         "principal", "status", "id"]),
        _field_values, max_size=8,
    ).map(lambda d: {"job_type": "demo.noop", "session_id": "s-prop", "inputs": {}, **d}),
    _json,
)


@pytest.mark.django_db
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_bodies)
def test_submit_never_answers_5xx_and_a_refusal_writes_nothing(api: APIClient, body: Any) -> None:
    try:
        raw = json.dumps(body)
    except ValueError:
        raw = json.dumps(body, allow_nan=True)  # NaN/Infinity literals: the parser must refuse them
    jobs, stamps = Job.objects.count(), AuditStamp.objects.count()
    # json.dumps escapes every non-ASCII character (lone surrogates included): raw is ASCII
    response = api.generic("POST", "/api/v1/jobs", raw, content_type="application/json")
    assert response.status_code < 500, response.content
    assert response["Content-Type"] == "application/json"
    answer = response.json()
    if response.status_code >= 400 and response.status_code != 403:
        assert set(answer) >= {"code", "detail"}
        assert (Job.objects.count(), AuditStamp.objects.count()) == (jobs, stamps), answer
    else:
        # admitted, or recorded as blocked: exactly one job with its one stamp
        assert Job.objects.count() == jobs + (0 if response.status_code == 200 else 1)


# --- the transition table --------------------------------------------------------------------

_STATUSES = list(JobStatus.values)
_attempts = st.lists(
    st.tuples(
        st.sampled_from(["one", "bulk"]),
        st.sampled_from(_STATUSES),
        st.sets(st.sampled_from([*_STATUSES, ""]), min_size=1, max_size=3),
    ),
    max_size=15,
)


@pytest.mark.django_db
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attempts=_attempts)
def test_any_sequence_of_transition_attempts_leaves_a_legal_status_and_a_verifying_chain(
    principal: Any, attempts: list[tuple[str, str, set[str]]]
) -> None:
    job = job_submit(principal=principal.user, spec=SubmitSpec(job_type="demo.noop", inputs={}, session_id="p")).job
    model, moves = job.status, [("", job.status)]
    for how, to, froms in attempts:
        legal = all(f in LEGAL[to] for f in froms)
        try:
            if how == "one":
                prior = job_transition(job_id=job.id, to=to, allowed_from=froms, event="property_attempt")
            else:
                moved = jobs_transition_bulk(jobs=[job.id], to=to, allowed_from=froms, event="property_attempt")
                prior = next(iter(moved)) if moved else None
        except IllegalTransition:
            assert not legal, (to, froms)
            continue
        assert legal, (to, froms)
        if model in froms:
            assert prior == model
            moves.append((model, to))
            model = to
        else:
            assert prior is None
        assert Job.objects.get(pk=job.id).status == model
    # the job is in a legal status, reached only by legal steps, and its chain verifies
    assert model in JobStatus.values
    assert all(frm in LEGAL[to] for frm, to in moves)
    stamps = list(AuditStamp.objects.filter(job_id=job.id).order_by("seq").values_list("from_status", "to_status"))
    assert stamps == moves
    report = audit_verify(job_id=job.id)
    assert report.ok, [str(b) for b in report.broken]
