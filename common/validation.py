"""Validation at the edge: what every way in (REST, admin, MCP) checks before anything is stored.

Pure functions over already-decoded values; each refusal is a :class:`common.errors.DomainError`
with a specific code, so a caller never needs to translate:

- ``invalid_characters``: NUL and other control characters, lone surrogates (which no UTF-8
  encoder, PostgreSQL or log line accepts);
- ``too_deep``: JSON nested deeper than ``API_JSON_MAX_DEPTH``;
- ``out_of_range``: integers and datetimes outside their bounds;
- ``invalid_type``: a JSON value of the wrong type (no coercion of ``"5"`` to ``5``);
- ``unknown_field``: a top-level field the endpoint does not define.

Two character rules (``docs/api.md`` "Limits"):

- **identifiers** (ids, ``session_id``, ``job_type``, keys, query and path parameters) may hold no
  control character at all (Unicode category Cc), no lone surrogate, no line or paragraph
  separator and no bidirectional override — they end up in log lines, consoles and URLs;
- **text** (string values inside JSON, comments) may hold TAB, LF and CR, and nothing else of
  the above.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from common.errors import DomainError

# C0 and C1 controls, DEL, lone surrogates, U+2028/2029, bidi embeddings/overrides/isolates.
_IDENTIFIER_BAD = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# The same, minus TAB, LF and CR (multi-line text is fine inside values).
_TEXT_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")

# PostgreSQL ``integer``: the widest bound any integer parameter here is compared with.
INT32_MAX = 2**31 - 1


def _describe(char: str) -> str:
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        return f"lone surrogate U+{code:04X}"
    return f"U+{code:04X}"


def _refuse_characters(where: str, char: str) -> DomainError:
    return DomainError(
        "invalid_characters",
        f"{where} contains a character that is not allowed ({_describe(char)})",
        errors={where: [f"character {_describe(char)} is not allowed"]},
    )


def check_identifier(value: str, *, where: str) -> str:
    """``value`` if it holds no control character, lone surrogate or bidi override."""
    bad = _IDENTIFIER_BAD.search(value)
    if bad:
        raise _refuse_characters(where, bad.group())
    return value


def check_text(value: str, *, where: str) -> str:
    """``value`` if it holds no control character other than TAB/LF/CR and no lone surrogate."""
    bad = _TEXT_BAD.search(value)
    if bad:
        raise _refuse_characters(where, bad.group())
    return value


def max_json_depth() -> int:
    return int(settings.API_JSON_MAX_DEPTH)


def check_json(value: Any, *, where: str = "(root)", max_depth: int | None = None) -> Any:
    """``value`` (a decoded JSON document) if every key is an identifier, every string is text,
    every number is finite and nesting stays within ``max_depth`` containers.

    Iterative, so a hostile document cannot exhaust the stack here; the decoder's own recursion
    is handled by :func:`json_loads`. Returns ``value`` unchanged.
    """
    limit = max_json_depth() if max_depth is None else max_depth
    stack: list[tuple[Any, str, int]] = [(value, where, 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            check_text(item, where=path)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise DomainError("invalid_type", f"{path} is not a finite number",
                                  errors={path: ["not a finite number"]})
        elif isinstance(item, Mapping):
            if depth > limit:
                raise too_deep(limit)
            for key, child in item.items():
                key_text = str(key)
                child_path = key_text if path == "(root)" else f"{path}.{key_text}"
                check_identifier(key_text, where=f"{path} key" if path != "(root)" else "key")
                stack.append((child, child_path, depth + 1))
        elif isinstance(item, (list, tuple)):
            if depth > limit:
                raise too_deep(limit)
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
    return value


def too_deep(limit: int) -> DomainError:
    return DomainError("too_deep", f"JSON is nested deeper than {limit} levels", max_depth=limit)


def json_loads(raw: str | bytes, *, max_depth: int | None = None) -> Any:
    """Decode a JSON document and :func:`check_json` it.

    ``NaN``/``Infinity`` literals are refused (``malformed_json``), as is anything the decoder
    refuses; a document so deep that the decoder itself runs out of stack is ``too_deep``.
    """
    limit = max_json_depth() if max_depth is None else max_depth

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        value = json.loads(raw, parse_constant=no_constants)
    except RecursionError:
        raise too_deep(limit) from None
    except UnicodeDecodeError:
        raise DomainError("malformed_json", "Not UTF-8.") from None
    except ValueError as exc:
        raise DomainError("malformed_json", f"Not valid JSON: {exc}") from None
    return check_json(value, max_depth=limit)


def check_fields(data: Mapping[str, Any], *, allowed: set[str] | frozenset[str], where: str = "") -> None:
    """Refuse top-level fields outside ``allowed`` with ``unknown_field`` (all of them listed)."""
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        prefix = f"{where}: " if where else ""
        raise DomainError("unknown_field", f"{prefix}unknown field(s): {', '.join(unknown)}",
                          errors={k: ["unknown field"] for k in unknown})


def check_int(value: Any, *, where: str, minimum: int, maximum: int) -> int:
    """A JSON integer (not a bool, not a string) within ``[minimum, maximum]``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise DomainError("invalid_type", f"{where} must be an integer", errors={where: ["must be an integer"]})
    if not minimum <= value <= maximum:
        raise out_of_range(where, f"must be between {minimum} and {maximum}")
    return value


def int_param(raw: str | None, *, where: str, default: int, minimum: int, maximum: int) -> int:
    """A query parameter or header holding a decimal integer within bounds; ``default`` if absent.

    ``12abc`` and ``1.5`` are ``invalid_type``; ``99999999999999999999`` is ``out_of_range``
    (never handed to the database, where it would not fit a column).
    """
    if raw is None or raw == "":
        return default
    text = raw.strip()
    if not re.fullmatch(r"[+-]?\d{1,40}", text):
        raise DomainError("invalid_type", f"{where} must be an integer", errors={where: ["must be an integer"]})
    value = int(text)
    if not minimum <= value <= maximum:
        raise out_of_range(where, f"must be between {minimum} and {maximum}")
    return value


def check_length(value: str, *, where: str, maximum: int) -> str:
    """``value`` if it is an identifier of at most ``maximum`` characters."""
    check_identifier(value, where=where)
    if len(value) > maximum:
        raise out_of_range(where, f"must be at most {maximum} characters")
    return value


def out_of_range(where: str, message: str) -> DomainError:
    return DomainError("out_of_range", f"{where} {message}", errors={where: [message]})


def check_run_after(value: datetime | None, *, now: datetime | None = None) -> datetime | None:
    """``run_after`` within ``[now - JOBS_RUN_AFTER_MAX_PAST_S, now + JOBS_RUN_AFTER_MAX_AHEAD_S]``.

    A date far ahead would park a job forever; one far behind would jump every queue (ordering
    ties are broken by ``run_after``). A moment slightly in the past (client clocks drift) is fine.
    """
    if value is None:
        return None
    now = now or timezone.now()
    earliest = now - timedelta(seconds=settings.JOBS_RUN_AFTER_MAX_PAST_S)
    latest = now + timedelta(seconds=settings.JOBS_RUN_AFTER_MAX_AHEAD_S)
    if not earliest <= value <= latest:
        raise out_of_range(
            "run_after",
            f"must be between {earliest.isoformat(timespec='seconds')} and {latest.isoformat(timespec='seconds')}",
        )
    return value


def check_query(params: Mapping[str, Any]) -> None:
    """Every query parameter name and value is an identifier (see the module docstring)."""
    getlist = getattr(params, "getlist", None)
    for key in params:
        check_identifier(str(key), where=f"query parameter {key!r}"[:80])
        values = getlist(key) if getlist is not None else [params[key]]
        for value in values:
            check_identifier(str(value), where=f"query parameter {key}")


def check_path(path: str) -> None:
    """A decoded request path holds no control character (``/jobs/job_a%00b``)."""
    check_identifier(path, where="path")
