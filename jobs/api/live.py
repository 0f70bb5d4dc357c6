"""Async views for requests that wait: the event stream and ``Prefer: wait=N`` (RFC 7240).

An open stream or a wait holds neither a thread nor a database connection: it awaits a
:class:`jobs.api.hub.Watch`, woken by a wake-up published after the job's transition committed
(``jobs.wakeups``) or by the hub's periodic re-check, and then re-reads the job — the database is
the truth, the wake-up only says "look again". The ASGI entry point (``config/asgi.py``) serves
these requests without Django's per-request thread.

Everything that does not wait is the existing DRF views' business: ``jobs_collection`` and
``job_detail`` hand a request without ``Prefer: wait`` to ``JobListCreateView`` /
``JobDetailView`` unchanged, and with it call the same view (the same submit service,
governance, stamps and idempotency) before they wait. Authentication is DRF's (token or
session), and a refusal is the API's usual JSON error body through the same exception handler.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from audit.selectors import stamps_for_job
from common.errors import DomainError
from common.validation import INT32_MAX, int_param
from jobs.api.hub import hub, run_db, serve_in_request_thread
from jobs.api.schema import SSE_EVENT_SCHEMA, error_responses
from jobs.api.views import JobDetailView, JobListCreateView, job_detail_body
from jobs.models import TERMINAL_STATUSES, Job
from jobs.selectors import LIVE_FIELDS, job_get

# --- how many requests one principal holds open ----------------------------------------------

# principal id -> streams and waits it holds open in this process (the event loop is one thread).
_held: dict[int, int] = {}


def hold(principal_id: int) -> bool:
    """Take one of the principal's ``API_MAX_HELD_PER_PRINCIPAL`` places; False when all are taken.
    One runaway agent cannot hold the web tier's streams and waits away from the others."""
    if _held.get(principal_id, 0) >= settings.API_MAX_HELD_PER_PRINCIPAL:
        return False
    _held[principal_id] = _held.get(principal_id, 0) + 1
    return True


def release(principal_id: int) -> None:
    left = _held.get(principal_id, 0) - 1
    if left > 0:
        _held[principal_id] = left
    else:
        _held.pop(principal_id, None)


async def _held_stream(principal_id: int, stream: AsyncIterator[str]) -> AsyncIterator[str]:
    """``stream``, with the principal's place given back however it ends (a client that goes away
    closes the generator)."""
    try:
        async for chunk in stream:
            yield chunk
    finally:
        release(principal_id)


# --- Prefer: wait=N ---------------------------------------------------------------------------

_WAIT_VALUE = re.compile(r'^"?(\d+(?:\.\d+)?)"?$')


def prefer_wait(request: HttpRequest) -> float | None:
    """Seconds the client prefers to wait (``Prefer: wait=N``), capped by ``JOBS_WAIT_MAX_S``.

    RFC 7240: preferences are comma-separated ``name[=value]`` with optional ``;parameters``,
    names case-insensitive; one not understood is ignored, so a malformed ``wait`` means no wait.
    """
    header = request.headers.get("Prefer", "")
    for preference in header.split(","):
        name, _, value = preference.split(";", 1)[0].partition("=")
        if name.strip().lower() != "wait":
            continue
        match = _WAIT_VALUE.match(value.strip())
        if match is None:
            return None
        seconds = min(float(match.group(1)), settings.JOBS_WAIT_MAX_S)
        return seconds if seconds > 0 else None
    return None


def _applied(seconds: float) -> str:
    return f"wait={seconds:g}"


async def wait_until_ended(job_id: str, *, deadline: float) -> bool:
    """Wait until the job has ended (True) or the loop clock reaches ``deadline`` (False).

    Steps: register a watch, then loop — clear it, read the job's live state (a job that no
    longer exists counts as ended; the caller's read answers 404), return if terminal, else
    await a wake-up or the deadline. Clearing before the read means a change committed during
    the read is not missed: its wake-up finds the watch registered and cleared.
    """
    loop = asyncio.get_running_loop()
    with hub().watch(job_id) as watch:
        while True:
            watch.clear()
            state = await run_db(_live_state, job_id)
            if state is None or state[0] in TERMINAL_STATUSES:
                return True
            watch.seen = state
            if not await watch.wait(deadline - loop.time()):
                return False


def _live_state(job_id: str) -> tuple[Any, ...] | None:
    row = Job.objects.filter(pk=job_id).values_list(*LIVE_FIELDS).first()
    return tuple(row) if row is not None else None


# --- authentication and errors as the DRF views have them -------------------------------------


def _authenticate(request: HttpRequest) -> AbstractBaseUser:
    """The principal by the API's authentication classes (token, session), as a DRF view would
    find it; ``NotAuthenticated``/``AuthenticationFailed`` carry the ``WWW-Authenticate`` value."""
    classes: list[Any] = list(api_settings.DEFAULT_AUTHENTICATION_CLASSES)
    authenticators = [auth() for auth in classes]
    drf_request = Request(request, authenticators=authenticators)
    challenge = authenticators[0].authenticate_header(drf_request) if authenticators else None
    try:
        user = drf_request.user
    except exceptions.AuthenticationFailed as exc:
        exc.auth_header = challenge  # type: ignore[attr-defined]
        raise
    if user is None or not user.is_authenticated:
        missing = exceptions.NotAuthenticated()
        missing.auth_header = challenge  # type: ignore[attr-defined]
        raise missing
    return user  # type: ignore[return-value]


def error_response(exc: Exception) -> HttpResponse:
    """The API's JSON error for ``exc``, from the same exception handler the DRF views use."""
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)) and not getattr(
        exc, "auth_header", None
    ):
        exc.status_code = 403
    handler: Any = api_settings.EXCEPTION_HANDLER
    handled: Response | None = handler(exc, {})
    if handled is None:
        raise exc
    response = JsonResponse(handled.data, status=handled.status_code, safe=False)
    for header in ("WWW-Authenticate", "Retry-After"):
        if handled.has_header(header):
            response[header] = handled[header]
    return response


def _method_not_allowed(request: HttpRequest) -> HttpResponse:
    response = error_response(exceptions.MethodNotAllowed(request.method or ""))
    response["Allow"] = "GET"
    return response


def _visible_job(user: AbstractBaseUser, job_id: str) -> Job:
    job = job_get(principal=user, job_id=job_id)
    if job is None:
        raise DomainError("not_found", "No such job.")
    return job


def _body_of(job_id: str) -> dict[str, Any]:
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        raise DomainError("not_found", "No such job.")
    return job_detail_body(job)


def _live(request: HttpRequest) -> None:
    # A request served synchronously (WSGI, the test client) keeps its database work in its thread.
    serve_in_request_thread(not isinstance(request, ASGIRequest))


def _documented_as(view: type[APIView]) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
    """Let drf-spectacular describe an async view by the DRF view class that states its contract."""

    def mark(func: Callable[..., Awaitable[Any]]) -> Any:
        func.cls = view  # type: ignore[attr-defined]
        func.initkwargs = {}  # type: ignore[attr-defined]
        return func

    return mark


# --- POST /api/v1/jobs and GET /api/v1/jobs/{id} --------------------------------------------------

_collection = JobListCreateView.as_view()
_detail = JobDetailView.as_view()


async def _jobs_collection(request: HttpRequest) -> HttpResponse:
    """List (GET) and submit (POST); a submit with ``Prefer: wait=N`` answers once the job ended."""
    seconds = prefer_wait(request) if request.method == "POST" else None
    if seconds is None:
        return await sync_to_async(_collection)(request)  # type: ignore[no-any-return]
    _live(request)
    loop = asyncio.get_running_loop()
    # N counts from the request's arrival: the client waits at most about N seconds in all.
    deadline = loop.time() + seconds
    # The same DRF view, service, governance and idempotency as any submit.
    response: Response = await run_db(_collection, request)
    if response.status_code not in (200, 202):
        return response
    job_id = str(response.data["job_id"])
    principal_id = int(request.user.pk or 0)
    if not hold(principal_id):
        return response  # submitted; too many held by this principal: answered at once, unwaited
    try:
        ended = await wait_until_ended(job_id, deadline=deadline)
        if not ended:
            response["Preference-Applied"] = _applied(seconds)
            response["Vary"] = "Prefer"
            return response
        body = await run_db(_body_of, job_id)
    except Exception as exc:  # noqa: BLE001 - answered like any API error
        return error_response(exc)
    finally:
        release(principal_id)
    return JsonResponse(body, status=200, headers={"Preference-Applied": _applied(seconds), "Vary": "Prefer"})


async def _job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    """The job; with ``Prefer: wait=N``, once it has ended or N seconds passed."""
    seconds = prefer_wait(request) if request.method == "GET" else None
    if seconds is None:
        return await sync_to_async(_detail)(request, job_id=job_id)  # type: ignore[no-any-return]
    _live(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    try:
        user = await run_db(_authenticate, request)
        job = await run_db(_visible_job, user, job_id)
        if not hold(int(user.pk or 0)):
            # too many held by this principal: the current state at once, the preference not applied
            return JsonResponse(await run_db(_body_of, job.pk), status=200, headers={"Vary": "Prefer"})
        try:
            await wait_until_ended(job.pk, deadline=deadline)
        finally:
            release(int(user.pk or 0))
        body = await run_db(_body_of, job.pk)
    except Exception as exc:  # noqa: BLE001 - answered like any API error
        return error_response(exc)
    return JsonResponse(body, status=200, headers={"Preference-Applied": _applied(seconds), "Vary": "Prefer"})


jobs_collection = _documented_as(JobListCreateView)(csrf_exempt(_jobs_collection))
job_detail = _documented_as(JobDetailView)(csrf_exempt(_job_detail))


# --- GET /api/v1/jobs/{id}/events -----------------------------------------------------------------


def _sse(event: str, data: dict[str, Any], event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def _events_since(job_id: str, after_seq: int) -> tuple[tuple[Any, ...], list[dict[str, Any]]] | None:
    """(live state, stamps after ``after_seq``) of a job, or None when it no longer exists.

    The row is read before the stamps: a transition commits its status and its stamp together,
    so stamps read after a terminal status always include the stamp that made it terminal.
    """
    state = _live_state(job_id)
    if state is None:
        return None
    stamps: list[dict[str, Any]] = [
        dict(row) for row in stamps_for_job(job_id=job_id).filter(seq__gt=after_seq)
        .values("seq", "event", "from_status", "to_status", "created_at")
    ]
    return state, stamps


async def job_event_stream(job_id: str, *, after_seq: int = 0, max_seconds: float | None = None) -> AsyncIterator[str]:
    """Status changes (audit stamps) and progress of one job, until it ends or time runs out.

    Events: ``status`` (one per stamp, ``id`` = its seq, so a reconnecting client resumes with
    ``Last-Event-ID``), ``progress`` (when pct or message changed), then ``end`` with the final
    status, or ``timeout`` after ``API_SSE_MAX_S``. A comment line every ``API_SSE_KEEPALIVE_S``
    keeps idle connections alive through proxies.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (max_seconds or settings.API_SSE_MAX_S)
    last_seq = after_seq
    last_progress: tuple[Any, Any] | None = None
    yield "retry: 1000\n\n"
    with hub().watch(job_id) as watch:
        while True:
            watch.clear()
            found = await run_db(_events_since, job_id, last_seq)
            if found is None:
                return
            state, stamps = found
            watch.seen = state
            for stamp in stamps:
                last_seq = stamp["seq"]
                yield _sse("status", {"seq": stamp["seq"], "event": stamp["event"], "from": stamp["from_status"],
                                      "to": stamp["to_status"], "at": stamp["created_at"].isoformat()},
                           str(stamp["seq"]))
            status, _, pct, message = state
            if pct is not None and (pct, message) != last_progress:
                last_progress = (pct, message)
                yield _sse("progress", {"pct": pct, "message": message})
            if status in TERMINAL_STATUSES:
                yield _sse("end", {"status": status})
                return
            # Idle until woken; only a comment now and then, no database read.
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    yield _sse("timeout", {"status": status})
                    return
                if await watch.wait(min(remaining, settings.API_SSE_KEEPALIVE_S)):
                    break
                yield ": keepalive\n\n"


class JobEventsView(APIView):
    """The event stream's contract for the OpenAPI schema; :func:`job_events` serves it."""

    @extend_schema(
        parameters=[
            OpenApiParameter("Last-Event-ID", str, location=OpenApiParameter.HEADER, required=False,
                             description="resume after this stamp seq (sent by a reconnecting client)"),
            OpenApiParameter("after", {"type": "integer", "minimum": 0, "maximum": INT32_MAX}, required=False,
                             description="the same as Last-Event-ID, as a parameter (the header wins)"),
        ],
        responses={(200, "text/event-stream"): OpenApiResponse(SSE_EVENT_SCHEMA, description=(
            "Server-Sent Events, each as described: `status` (one per audit stamp; `id` is its seq), "
            "`progress` (`pct`, `message`), then `end` (`status`) or `timeout`.")), **error_responses(429)},
    )
    def get(self, request: Request, job_id: str) -> Response:  # pragma: no cover - documentation only
        raise exceptions.MethodNotAllowed("GET")


async def _job_events(request: HttpRequest, job_id: str) -> HttpResponse | StreamingHttpResponse:
    if request.method != "GET":
        return _method_not_allowed(request)
    _live(request)
    try:
        raw = request.headers.get("Last-Event-ID") or request.GET.get("after")
        after = int_param(raw, where="Last-Event-ID", default=0, minimum=0, maximum=INT32_MAX)
        user = await run_db(_authenticate, request)
        job = await run_db(_visible_job, user, job_id)
        if not hold(int(user.pk or 0)):
            raise DomainError("too_many_streams", f"at most {settings.API_MAX_HELD_PER_PRINCIPAL} event streams and "
                              "waits open at once per principal; close one or retry later", retry_after=5)
    except Exception as exc:  # noqa: BLE001 - answered like any API error
        return error_response(exc)
    response = StreamingHttpResponse(_held_stream(int(user.pk or 0), job_event_stream(job.pk, after_seq=after)),
                                     content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


job_events = _documented_as(JobEventsView)(csrf_exempt(_job_events))
