"""REST endpoints for jobs: thin views over jobs.services.submit and jobs.selectors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import renderers
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from audit.selectors import stamps_for_job
from common.errors import DomainError
from common.validation import INT32_MAX, int_param
from jobs.api.schema import SSE_EVENT_SCHEMA, error_responses
from jobs.api.serializers import (
    JobAuditSerializer,
    JobDetailSerializer,
    JobListSerializer,
    JobRunSerializer,
    JobSerializer,
    SubmitBlockedSerializer,
    SubmitResponseSerializer,
    SubmitSerializer,
    submit_body,
)
from jobs.api.throttling import SubmitRateThrottle
from jobs.logcontext import trace_id_from_traceparent
from jobs.models import TERMINAL_STATUSES, Job, JobStatus
from jobs.selectors import job_get, job_list, job_runs
from jobs.services.submit import SubmitSpec, job_submit


def get_job_or_404(request: Request, job_id: str) -> Job:
    """The job if this principal may see it; 404 ``not_found`` otherwise (also for others' jobs)."""
    job = job_get(principal=request.user, job_id=job_id)
    if job is None:
        raise DomainError("not_found", "No such job.")
    return job


def json_object_body(request: Request) -> dict[str, Any]:
    """The parsed body, which must be a JSON object (a list or scalar is ``invalid_request``)."""
    if not isinstance(request.data, dict):
        raise DomainError("invalid_request", "The body must be a JSON object.")
    return request.data


class JobListCreateView(ListAPIView):
    serializer_class = JobListSerializer

    def get_throttles(self) -> list[BaseThrottle]:
        # Submits only: reading the list is not rate limited.
        return [SubmitRateThrottle()] if self.request.method == "POST" else []

    def get_queryset(self) -> Any:
        status = self.request.query_params.get("status") or None
        if status and status not in JobStatus.values:
            raise DomainError("invalid_request", f"unknown status {status!r}",
                           errors={"status": [f"must be one of {', '.join(JobStatus.values)}"]})
        return job_list(
            principal=self.request.user,
            session_id=self.request.query_params.get("session_id") or None,
            status=status,
            job_type=self.request.query_params.get("job_type") or None,
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("session_id", {"type": "string", "maxLength": 128}),
            OpenApiParameter("status", str, enum=JobStatus.values),
            OpenApiParameter("job_type", {"type": "string", "maxLength": 128}),
        ]
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=SubmitSerializer,
        responses={
            202: SubmitResponseSerializer, 200: SubmitResponseSerializer,
            403: OpenApiResponse(SubmitBlockedSerializer, description="recorded as blocked"),
            **error_responses(409, 429),
        },
    )
    def post(self, request: Request) -> Response:
        serializer = SubmitSerializer(data=json_object_body(request))
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        spec = SubmitSpec(
            job_type=data["job_type"],
            inputs=data["inputs"],
            session_id=data["session_id"],
            idempotency_key=data.get("idempotency_key") or None,
            priority=data.get("priority", 0),
            run_after=data.get("run_after"),
            constraints=data.get("constraints") or {},
            # A W3C traceparent header makes the job part of the caller's trace.
            trace_id=data.get("trace_id", "") or trace_id_from_traceparent(request.headers.get("traceparent")),
            correlation_id=data.get("correlation_id", ""),
            conversation_id=data.get("conversation_id", ""),
            callback_url=data.get("callback_url", ""),
        )
        result = job_submit(principal=request.user, spec=spec)  # type: ignore[arg-type]
        body = submit_body(result.job, request)
        if result.blocked:
            missing = result.job.reason.startswith("missing permissions")
            body["code"] = "permission_denied" if missing else "policy_blocked"
            body["detail"] = result.job.reason
            return Response(body, status=403)
        return Response(body, status=202 if result.created else 200)


class JobDetailView(APIView):
    @extend_schema(responses=JobDetailSerializer)
    def get(self, request: Request, job_id: str) -> Response:
        job = get_job_or_404(request, job_id)
        data = JobSerializer(job).data
        data["runs"] = JobRunSerializer(job_runs(job_id=job.pk), many=True).data
        return Response(data)


class JobAuditView(APIView):
    @extend_schema(responses=JobAuditSerializer)
    def get(self, request: Request, job_id: str) -> Response:
        job = get_job_or_404(request, job_id)
        stamps = stamps_for_job(job_id=job.pk)
        return Response(JobAuditSerializer({"job_id": job.pk, "stamps": stamps}).data)


class EventStreamRenderer(renderers.BaseRenderer):
    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return json.dumps(data).encode()


def _sse(event: str, data: dict[str, Any], event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def job_event_stream(job_id: str, *, after_seq: int = 0, max_seconds: float | None = None) -> Iterator[str]:
    """Status changes (audit stamps) and progress of one job, until it ends or time runs out."""
    deadline = time.monotonic() + (max_seconds or settings.API_SSE_MAX_S)
    last_seq = after_seq
    last_progress: tuple[Any, Any] | None = None
    yield "retry: 1000\n\n"
    try:
        while True:
            for stamp in stamps_for_job(job_id=job_id).filter(seq__gt=last_seq):
                last_seq = stamp.seq
                yield _sse("status", {"seq": stamp.seq, "event": stamp.event, "from": stamp.from_status,
                                      "to": stamp.to_status, "at": stamp.created_at.isoformat()},
                           str(stamp.seq))
            row = Job.objects.filter(pk=job_id).values("status", "progress_pct", "progress_message").first()
            if row is None:
                return
            progress = (row["progress_pct"], row["progress_message"])
            if row["progress_pct"] is not None and progress != last_progress:
                last_progress = progress
                yield _sse("progress", {"pct": row["progress_pct"], "message": row["progress_message"]})
            if row["status"] in TERMINAL_STATUSES:
                yield _sse("end", {"status": row["status"]})
                return
            if time.monotonic() > deadline:
                yield _sse("timeout", {"status": row["status"]})
                return
            time.sleep(settings.API_SSE_POLL_S)
    finally:
        close_old_connections()


class JobEventsView(APIView):
    renderer_classes = [renderers.JSONRenderer, EventStreamRenderer]

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        # An error is a JSON body even when the client asked for text/event-stream.
        if isinstance(response, Response):
            request.accepted_renderer = renderers.JSONRenderer()
            request.accepted_media_type = "application/json"
        return super().finalize_response(request, response, *args, **kwargs)

    @extend_schema(
        parameters=[OpenApiParameter(
            "after", {"type": "integer", "minimum": 0, "maximum": INT32_MAX},
            description="resume after this stamp seq (the Last-Event-ID header wins)",
        )],
        responses={(200, "text/event-stream"): OpenApiResponse(
            SSE_EVENT_SCHEMA,
            description="Server-Sent Events, each as described: `status` (id = stamp seq), `progress`, "
                        "then `end` or `timeout`",
        )},
    )
    def get(self, request: Request, job_id: str) -> StreamingHttpResponse:
        job = get_job_or_404(request, job_id)
        raw = request.headers.get("Last-Event-ID") or request.query_params.get("after")
        after = int_param(raw, where="Last-Event-ID", default=0, minimum=0, maximum=INT32_MAX)
        response = StreamingHttpResponse(job_event_stream(job.pk, after_seq=after), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response
