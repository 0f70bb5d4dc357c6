"""One error shape for the whole API: ``{"code": <stable code>, "detail": <text>, ...}``."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found, server_error
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from common.errors import DomainError

logger = logging.getLogger(__name__)

_CODES: dict[type[Exception], str] = {
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.ParseError: "malformed_json",
    exceptions.Throttled: "throttled",
    exceptions.ValidationError: "invalid_request",
    # Django's own, which DRF turns into NotFound / PermissionDenied answers.
    Http404: "not_found",
    PermissionDenied: "permission_denied",
}


def flat_errors(data: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's validation errors as the documented ``{field: [messages]}``: nested fields and list
    items become dotted keys (``rules.0``, ``inputs.key``); a bare list belongs to ``prefix``."""
    out: dict[str, list[str]] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flat_errors(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list) and all(isinstance(v, (str, exceptions.ErrorDetail)) for v in data):
        out.setdefault(prefix or "non_field_errors", []).extend(str(v) for v in data)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            if value:
                out.update(flat_errors(value, f"{prefix}.{index}" if prefix else str(index)))
    else:
        out.setdefault(prefix or "non_field_errors", []).append(str(data))
    return out


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, RequestDataTooBig):
        return Response(
            {"code": "payload_too_large", "detail": "Request body too large."},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, (OperationalError, InterfaceError)):
        logger.warning("database unavailable: %s", exc)
        return Response(
            {"code": "database_unavailable", "detail": "The database is unavailable; retry later."},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, DomainError):
        # The one place a domain refusal becomes an HTTP answer.
        answer = Response(exc.as_dict(), status=exc.status)
        if "retry_after" in exc.extra:
            answer["Retry-After"] = str(exc.extra["retry_after"])
        return answer
    response = exception_handler(exc, context)
    if response is None:
        return None
    code = next((c for t, c in _CODES.items() if isinstance(exc, t)), "error")
    data = response.data
    if isinstance(exc, exceptions.ValidationError):
        response.data = {"code": code, "detail": "Invalid request.", "errors": flat_errors(data)}
    else:
        detail = data.get("detail", data) if isinstance(data, dict) else data
        response.data = {"code": code, "detail": str(detail)}
        wait = getattr(exc, "wait", None)
        if isinstance(exc, exceptions.Throttled) and wait is not None:
            response.data["retry_after"] = int(wait)
    return response


def api_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse({"code": "not_found", "detail": "Not found."}, status=404)
    return page_not_found(request, exception or Exception("not found"))


def api_server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse({"code": "server_error", "detail": "Internal error."}, status=500)
    return server_error(request)
