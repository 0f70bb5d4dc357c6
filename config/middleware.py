"""Request guards that must run before any view parses a body, and static files."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from whitenoise.middleware import WhiteNoiseMiddleware

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

    Sync and async capable: under ASGI a sync-only middleware would run everything below it in
    a thread, and an async event stream would hold that thread for as long as it is open.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self._acall(request)
        return self._refusal(request) or self.get_response(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        return self._refusal(request) or await self.get_response(request)

    def _refusal(self, request: HttpRequest) -> HttpResponse | None:
        if not request.path.startswith("/api/"):
            # The admin and the pages: a NUL in an object id reached PostgreSQL there too.
            try:
                check_path(request.path)
            except DomainError as exc:
                return HttpResponseBadRequest(exc.detail, content_type="text/plain; charset=utf-8")
            return None
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return JsonResponse({"code": "bad_request", "detail": "Content-Length is not a number."}, status=400)
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
        return None

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


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise, usable in an async middleware chain (WhiteNoise's own middleware is sync-only,
    which under ASGI would put every request below it, event streams included, in a thread).

    A static file is looked up and served as WhiteNoise does (off the event loop); anything else
    goes straight to the next layer.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        super().__init__(get_response)
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self._acall(request)
        return super().__call__(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        static_file = (
            await sync_to_async(self.find_file, thread_sensitive=False)(request.path_info)
            if self.autorefresh else self.files.get(request.path_info)
        )
        if static_file is None:
            return await self.get_response(request)  # type: ignore[no-any-return]
        return await sync_to_async(self.serve, thread_sensitive=False)(static_file, request)  # type: ignore[no-any-return]
