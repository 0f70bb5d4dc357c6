"""Request guards that must run before any view parses a body."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

from common.errors import DomainError
from common.validation import check_path, check_query


class ApiGuardMiddleware:
    """Refuse oversized API bodies with 413, control characters in the path or query with 400
    ``invalid_characters`` (``/jobs/job_a%00b``, ``?session_id=a%00b``: they would reach the
    database, the logs and the consoles; outside the API a path with them is a plain 400), and
    turn a lost database into 503.

    The size check uses Content-Length, so a 10 MiB body is refused before it is read. A body
    without Content-Length (chunked) is bounded by Django's DATA_UPLOAD_MAX_MEMORY_SIZE, which
    the exception handler maps to the same 413.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/api/"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return JsonResponse(
                    {"code": "bad_request", "detail": "Content-Length is not a number."}, status=400
                )
            if length > settings.API_MAX_BODY_BYTES:
                return JsonResponse(
                    {
                        "code": "payload_too_large",
                        "detail": f"Request body exceeds {settings.API_MAX_BODY_BYTES} bytes.",
                    },
                    status=413,
                )
            try:
                check_path(request.path)
                check_query(request.GET)
            except DomainError as exc:
                return JsonResponse(exc.as_dict(), status=exc.status)
        else:
            # The admin and the pages: a NUL in an object id reached PostgreSQL there too.
            try:
                check_path(request.path)
            except DomainError as exc:
                return HttpResponseBadRequest(exc.detail, content_type="text/plain; charset=utf-8")
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, (OperationalError, InterfaceError)) or (
            isinstance(exception, DatabaseError) and "connection" in str(exception).lower()
        ):
            return JsonResponse(
                {"code": "database_unavailable", "detail": "The database is unavailable; retry later."},
                status=503,
                headers={"Retry-After": "5"},
            )
        return None
