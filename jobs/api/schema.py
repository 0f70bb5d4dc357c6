"""The OpenAPI schema tells the truth about errors: one error body, documented on every operation.

:class:`ApiAutoSchema` (``REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"]``) adds to each operation the
error answers any request may get — ``400`` (characters, parameters), ``401``, ``406``, ``413``
and ``503`` everywhere, ``404`` where the path names a resource, ``415`` where a body is parsed —
all with :class:`ErrorSerializer` as ``application/json``. Views add the answers only they give
(``403``, ``409``, ``429``) with :func:`error_responses`. ``Retry-After`` is declared on ``429``
and ``503``. ``414`` is declared too, as the web server's own HTML page: a URL too long for it
never reaches the API.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

from common.errors import STATUS_BY_CODE
from jobs.api.validation import StrictSerializer

# What common.validation.check_identifier accepts, as an ECMA-262 pattern for the schema.
IDENTIFIER_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069]*$"

# One Server-Sent Event as clients (and schemathesis) parse it; ``data`` is a JSON document.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["status", "progress", "end", "timeout"]},
        "id": {"type": "string", "description": "status events: the stamp's seq (resume with Last-Event-ID)"},
        "retry": {"type": "integer"},
        "data": {
            "type": "string",
            "description": "JSON. status: {seq, event, from, to, at}; progress: {pct, message}; "
                           "end and timeout: {status}",
        },
    },
}


class ErrorSerializer(serializers.Serializer[Any]):
    """``{"code", "detail", "errors"?, ...}``: every error answer of the API has this shape."""

    code = serializers.CharField(help_text="stable machine-readable code (docs/api.md, Errors)")
    detail = serializers.CharField(help_text="human-readable explanation")
    # Shadows Serializer.errors; harmless: this serializer only describes bodies, never validates.
    errors = serializers.JSONField(  # type: ignore[assignment]
        required=False,
        help_text="validation errors: field (or JSON path) -> list of messages",
    )
    job_id = serializers.CharField(required=False, help_text="idempotency_conflict: the existing job")
    status = serializers.CharField(required=False, help_text="not_cancellable: the job's status")
    missing_permissions = serializers.ListField(child=serializers.CharField(), required=False)
    policy = serializers.JSONField(required=False, help_text="policy_blocked: the decision")
    retry_after = serializers.IntegerField(required=False, help_text="throttled: seconds to wait")
    max_depth = serializers.IntegerField(required=False, help_text="too_deep: the nesting limit")


_DESCRIPTIONS = {
    400: "invalid_request, invalid_characters, invalid_type, out_of_range, unknown_field, too_deep, "
         "malformed_json, or an operation's own validation code",
    401: "not_authenticated or authentication_failed",
    403: "permission_denied or an operation's own refusal",
    404: "not_found (also for what the caller may not see)",
    406: "not_acceptable (Accept header or ?format= that cannot be served)",
    409: "the state does not allow it",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "throttled",
    503: "database_unavailable",
}


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """``{status: error body}`` for ``@extend_schema(responses={...})``."""
    return {status: OpenApiResponse(ErrorSerializer, description=_DESCRIPTIONS.get(status, "")) for status in statuses}


def codes_for(status: int) -> list[str]:
    """The stable codes :data:`common.errors.STATUS_BY_CODE` maps to ``status``."""
    return sorted(code for code, s in STATUS_BY_CODE.items() if s == status)


URI_TOO_LONG: dict[str, Any] = {
    "description": "URI too long: refused by the web server (gunicorn: a request line over 4094 bytes) "
                   "before the API sees the request; the body is the server's own page, not JSON",
    "content": {"text/html": {"schema": {"type": "string"}}},
}


class ApiAutoSchema(AutoSchema):
    def _map_serializer(self, serializer: Any, direction: Any, bypass_extensions: bool = False) -> Any:
        schema = super()._map_serializer(serializer, direction, bypass_extensions)
        if isinstance(serializer, StrictSerializer) and isinstance(schema, dict):
            # Say what StrictSerializer enforces: no other fields, no control characters.
            schema["additionalProperties"] = False
            properties = schema.get("properties", {})
            for name, field in serializer.fields.items():
                if (isinstance(field, serializers.CharField) and name not in serializer.text_fields
                        and name in properties and "pattern" not in properties[name]):
                    properties[name]["pattern"] = IDENTIFIER_PATTERN
        return schema

    def _generic_error_statuses(self) -> list[int]:
        statuses = [400, 401, 406, 413, 503]
        if "{" in self.path:
            statuses.append(404)
        if self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None:
            statuses.append(415)
        return statuses

    def _get_response_bodies(self, direction: Any = "response") -> Any:
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for status in sorted(self._generic_error_statuses()):
            key = str(status)
            if key not in responses:
                responses[key] = self._get_response_for_code(
                    OpenApiResponse(ErrorSerializer, description=_DESCRIPTIONS.get(status, "")),
                    key, media_types=["application/json"], direction=direction,
                )
        # Not the API's answer but the web server's, before any of this code runs.
        responses.setdefault("414", URI_TOO_LONG)
        return dict(sorted(responses.items()))

    def _get_response_for_code(self, serializer: Any, status_code: Any, media_types: Any = None,
                               direction: Any = "response") -> Any:
        # Error answers are always JSON, whatever else the operation renders (the event stream).
        if isinstance(serializer, OpenApiResponse) and serializer.response is ErrorSerializer:
            media_types = ["application/json"]
        return super()._get_response_for_code(serializer, status_code, media_types, direction)

    def _get_response_headers_for_code(self, status_code: Any, direction: Any = "response") -> Any:
        headers = super()._get_response_headers_for_code(status_code, direction)
        if str(status_code) in ("429", "503"):
            headers = dict(headers or {})
            headers["Retry-After"] = {"schema": {"type": "integer"},
                                      "description": "seconds to wait before trying again"}
        return headers

