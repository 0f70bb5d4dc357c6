"""The REST edge of :mod:`common.validation`: the JSON parser, strict serializers, bounded pages
and content negotiation every API view uses (set once in ``REST_FRAMEWORK``).

- :class:`SafeJSONParser` decodes bodies with the depth, character and size rules, so no view
  ever sees a NUL, a lone surrogate or a 1,000-deep document;
- :class:`StrictSerializer` refuses unknown top-level fields (``unknown_field``), values of the
  wrong JSON type (``invalid_type``: no ``"5"`` for an integer), integers outside the field's
  bounds (``out_of_range``) and control characters in string fields (``invalid_characters``);
- :class:`BoundedLimitOffsetPagination` pages at ``API_PAGE_SIZE`` by default and refuses a
  ``limit`` above ``API_MAX_PAGE_SIZE`` (``out_of_range``) rather than silently shortening the page;
- :class:`StrictContentNegotiation` answers an unknown ``?format=`` with ``406 not_acceptable``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from rest_framework import exceptions, serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import JSONParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

from common.errors import DomainError
from common.validation import (
    INT32_MAX,
    check_fields,
    check_identifier,
    check_text,
    int_param,
    json_loads,
    out_of_range,
)


class SafeJSONParser(JSONParser):
    """JSON bodies through :func:`common.validation.json_loads` (depth, characters, constants)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        if stream is None:
            return None
        limit = int(settings.API_MAX_BODY_BYTES)
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise DomainError("payload_too_large", f"Request body exceeds {limit} bytes.")
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = raw.decode(encoding)
        except (LookupError, UnicodeDecodeError):
            raise DomainError("malformed_json", f"The body is not valid {encoding}.") from None
        return json_loads(text)


def _type_error(where: str, expected: str) -> DomainError:
    return DomainError("invalid_type", f"{where} must be {expected}", errors={where: [f"must be {expected}"]})


def check_field_value(field: serializers.Field[Any, Any, Any, Any], value: Any, *, where: str,
                      text_fields: frozenset[str] = frozenset()) -> None:
    """The strict JSON type of one serializer field's raw value (before DRF would coerce it)."""
    if value is None:
        if not getattr(field, "allow_null", False):
            raise _type_error(where, "a value, not null")
        return
    if isinstance(field, serializers.BooleanField):
        if not isinstance(value, bool):
            raise _type_error(where, "a boolean")
    elif isinstance(field, serializers.IntegerField):
        if not isinstance(value, int) or isinstance(value, bool):
            raise _type_error(where, "an integer")
        low, high = field.min_value, field.max_value
        if (low is not None and value < low) or (high is not None and value > high):
            raise out_of_range(where, f"must be between {low} and {high}")
    elif isinstance(field, (serializers.CharField, serializers.ChoiceField, serializers.DateTimeField)):
        if not isinstance(value, str):
            raise _type_error(where, "a string")
        if where in text_fields:
            check_text(value, where=where)
        else:
            check_identifier(value, where=where)
    elif isinstance(field, serializers.ListField):
        if not isinstance(value, list):
            raise _type_error(where, "a list")
        for i, item in enumerate(value):
            check_field_value(field.child, item, where=f"{where}[{i}]")
    elif isinstance(field, serializers.DictField) and not isinstance(value, dict):
        raise _type_error(where, "an object")


class StrictSerializer(serializers.Serializer[Any]):
    """A request body serializer that coerces nothing and ignores nothing.

    Checks, before DRF's own validation: the body is a JSON object; every top-level field is one
    this serializer defines (``unknown_field``); each value has its field's JSON type
    (``invalid_type``), integers are within the field's bounds (``out_of_range``), and strings
    hold no control characters (``invalid_characters``; fields named in ``text_fields`` may hold
    TAB/LF/CR).
    """

    text_fields: frozenset[str] = frozenset()

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise DomainError("invalid_request", "The body must be a JSON object.")
        check_fields(data, allowed=frozenset(self.fields))
        for name, value in data.items():
            check_field_value(self.fields[name], value, where=name, text_fields=self.text_fields)
        return super().to_internal_value(data)


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """``?limit=`` 1…``API_MAX_PAGE_SIZE`` (default ``API_PAGE_SIZE``), ``?offset=`` 0…2³¹−1."""

    @property
    def default_limit(self) -> int:  # type: ignore[override]
        return int(settings.API_PAGE_SIZE)

    @property
    def max_limit(self) -> int:  # type: ignore[override]
        return int(settings.API_MAX_PAGE_SIZE)

    def get_limit(self, request: Request) -> int:
        return int_param(request.query_params.get(self.limit_query_param), where=self.limit_query_param,
                         default=self.default_limit, minimum=1, maximum=self.max_limit)

    def get_offset(self, request: Request) -> int:
        return int_param(request.query_params.get(self.offset_query_param), where=self.offset_query_param,
                         default=0, minimum=0, maximum=INT32_MAX)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": self.limit_query_param, "required": False, "in": "query",
                "description": f"Results per page (default {self.default_limit}, at most {self.max_limit}; "
                               "more is 400 out_of_range).",
                "schema": {"type": "integer", "minimum": 1, "maximum": self.max_limit},
            },
            {
                "name": self.offset_query_param, "required": False, "in": "query",
                "description": "Index of the first result.",
                "schema": {"type": "integer", "minimum": 0, "maximum": INT32_MAX},
            },
        ]


class StrictContentNegotiation(DefaultContentNegotiation):
    """DRF answers an unknown ``?format=`` with a bare Http404; this answers 406 ``not_acceptable``."""

    def filter_renderers(self, renderers: Iterable[BaseRenderer], format: str) -> list[BaseRenderer]:
        renderers = list(renderers)
        matching = [renderer for renderer in renderers if renderer.format == format]
        if not matching:
            known = ", ".join(sorted({str(r.format) for r in renderers if r.format}))
            raise exceptions.NotAcceptable(f"Unknown format; this endpoint renders: {known}.")
        return matching
