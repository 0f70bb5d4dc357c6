"""REST endpoints for jobs: thin views over jobs.services.submit and jobs.selectors.

Waiting (``Prefer: wait``) and the event stream are served by the async views in ``jobs/api/live.py``,
which call these views for everything else.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from audit.selectors import stamps_for_job
from common.errors import DomainError
from jobs.api.schema import error_responses
from jobs.api.serializers import (
    JobAuditSerializer,
    JobDetailSerializer,
    JobListSerializer,
    JobRunSerializer,
    JobSerializer,
    JobUrls,
    SubmitBlockedSerializer,
    SubmitResponseSerializer,
    SubmitSerializer,
    submit_body,
)
from jobs.api.throttling import SubmitRateThrottle
from jobs.logcontext import trace_id_from_traceparent
from jobs.models import Job, JobStatus
from jobs.selectors import job_get, job_list, job_runs
from jobs.services.submit import SubmitResult, SubmitSpec, job_submit

# RFC 7240: a client may ask to wait for the job's end (jobs/api/live.py serves it).
PREFER_WAIT = OpenApiParameter(
    "Prefer", str, location=OpenApiParameter.HEADER, required=False,
    description=("`wait=N` (RFC 7240): answer when the job has ended, or after N seconds (capped by "
                 "`JOBS_WAIT_MAX_S`, default 60), whichever comes first."),
)


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
        parameters=[PREFER_WAIT],
        responses={
            202: SubmitResponseSerializer,
            200: OpenApiResponse(JobSerializer, description=(
                "With `Prefer: wait=N`: the job ended within N seconds — the full job, as "
                "`GET /api/v1/jobs/{id}` shows it (header `Preference-Applied: wait=N`). Without it, "
                "or when N ran out on an idempotent replay: the same handle as 202.")),
            403: OpenApiResponse(SubmitBlockedSerializer, description="recorded as blocked"),
            **error_responses(409, 429),
        },
    )
    def post(self, request: Request) -> Response:
        serializer = SubmitSerializer(data=json_object_body(request))
        serializer.is_valid(raise_exception=True)
        spec = submit_spec(serializer.validated_data, traceparent=request.headers.get("traceparent"))
        result = job_submit(principal=request.user, spec=spec)  # type: ignore[arg-type]
        status, body = submit_answer(result, request)
        return Response(body, status=status)


def submit_spec(data: dict[str, Any], *, traceparent: str | None = None) -> SubmitSpec:
    """The service's view of a validated submit body (``SubmitSerializer``); a W3C
    ``traceparent`` header makes the job part of the caller's trace when the body names none."""
    return SubmitSpec(
        job_type=data["job_type"],
        inputs=data["inputs"],
        session_id=data["session_id"],
        idempotency_key=data.get("idempotency_key") or None,
        priority=data.get("priority", 0),
        run_after=data.get("run_after"),
        constraints=data.get("constraints") or {},
        trace_id=data.get("trace_id", "") or trace_id_from_traceparent(traceparent),
        correlation_id=data.get("correlation_id", ""),
        conversation_id=data.get("conversation_id", ""),
        callback_url=data.get("callback_url", ""),
    )


def submit_answer(result: SubmitResult, request: Any, urls: JobUrls | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of a submit: 202 created, 200 idempotent replay, 403 blocked."""
    body = submit_body(result.job, request, urls)
    if result.blocked:
        missing = result.job.reason.startswith("missing permissions")
        body["code"] = "permission_denied" if missing else "policy_blocked"
        body["detail"] = result.job.reason
        return 403, body
    return (202 if result.created else 200), body


def job_detail_body(job: Job) -> dict[str, Any]:
    """The full job as ``GET /api/v1/jobs/{id}`` shows it, runs included."""
    data: dict[str, Any] = dict(JobSerializer(job).data)
    data["runs"] = JobRunSerializer(job_runs(job_id=job.pk), many=True).data
    return data


class JobDetailView(APIView):
    @extend_schema(
        parameters=[PREFER_WAIT],
        responses=OpenApiResponse(JobDetailSerializer, description=(
            "The job. With `Prefer: wait=N` the answer waits until the job has ended or N seconds "
            "passed, whichever comes first (header `Preference-Applied: wait=N`).")),
    )
    def get(self, request: Request, job_id: str) -> Response:
        return Response(job_detail_body(get_job_or_404(request, job_id)))


class JobAuditView(APIView):
    @extend_schema(responses=JobAuditSerializer)
    def get(self, request: Request, job_id: str) -> Response:
        job = get_job_or_404(request, job_id)
        stamps = stamps_for_job(job_id=job.pk)
        return Response(JobAuditSerializer({"job_id": job.pk, "stamps": stamps}).data)
