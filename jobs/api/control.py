"""REST endpoints for control: cancel one, cancel many, and sessions (status, pause, resume).

Thin views over ``jobs.services.control`` (writes) and ``jobs.selectors`` (reads).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.validation import check_length
from jobs.api.schema import error_responses
from jobs.api.validation import StrictSerializer
from jobs.api.views import get_job_or_404, json_object_body
from jobs.models import JobStatus
from jobs.selectors import jobs_visible_to, session_principal_ids, sessions_summarize
from jobs.services.control import job_cancel, jobs_cancel, session_pause, session_resume

CANCEL_FILTER_STATUSES = (
    JobStatus.QUEUED, JobStatus.RETRY_SCHEDULED, JobStatus.PENDING_APPROVAL, JobStatus.RUNNING,
)


def _actor(request: Request) -> str:
    return f"principal:{request.user.get_username()}"


class CancelResponseSerializer(serializers.Serializer[Any]):
    job_id = serializers.CharField()
    status = serializers.CharField()
    cancelling = serializers.BooleanField()


class BulkCancelSerializer(StrictSerializer):
    """``POST /jobs/cancel``: which of the caller's jobs in a session to cancel."""

    session_id = serializers.CharField(max_length=128)
    status = serializers.ListField(
        child=serializers.ChoiceField(choices=[str(s) for s in CANCEL_FILTER_STATUSES]), required=False,
    )
    job_type = serializers.CharField(max_length=128, required=False)

    def to_internal_value(self, data: Any) -> Any:
        # ``status`` may be one status or a list of them.
        if isinstance(data, dict) and isinstance(data.get("status"), str):
            data = {**data, "status": [data["status"]]}
        return super().to_internal_value(data)


class JobCancelView(APIView):
    @extend_schema(operation_id="job_cancel", request=None,
                   responses={202: CancelResponseSerializer, **error_responses(409)})
    def post(self, request: Request, job_id: str) -> Response:
        job = get_job_or_404(request, job_id)
        status, cancelling = job_cancel(job=job, actor=_actor(request))
        return Response({"job_id": job.pk, "status": status, "cancelling": cancelling}, status=202)


class JobBulkCancelView(APIView):
    @extend_schema(
        operation_id="jobs_cancel_bulk",
        request=BulkCancelSerializer,
        responses={200: inline_serializer("BulkCancelResponse", {
            "cancelled": serializers.IntegerField(), "cancelling": serializers.IntegerField(),
            "by_status": serializers.DictField(child=serializers.IntegerField()),
        })},
    )
    def post(self, request: Request) -> Response:
        serializer = BulkCancelSerializer(data=json_object_body(request))
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        jobs = jobs_visible_to(principal=request.user).filter(session_id=data["session_id"])
        if data.get("status"):
            jobs = jobs.filter(status__in=data["status"])
        if data.get("job_type"):
            jobs = jobs.filter(job_type=data["job_type"])
        result = jobs_cancel(jobs=jobs, actor=_actor(request), reason="bulk_cancel")
        return Response(result.as_dict())


SESSION_ID_MAX = 128  # as the submit allows


class PauseSerializer(StrictSerializer):
    """``POST /sessions/{id}/pause``: until when (absent or null: until resumed)."""

    until = serializers.DateTimeField(required=False, allow_null=True)


def _session_id(session_id: str) -> str:
    """A session id from the path: as long as the submit allows (it keys stored controls)."""
    return check_length(session_id, where="session_id", maximum=SESSION_ID_MAX)


def _session_body(request: Request, session_id: str) -> dict[str, Any]:
    username = request.query_params.get("principal") or None
    ids = session_principal_ids(principal=request.user, session_id=session_id, username=username)
    summaries = sessions_summarize(keys=[(pid, session_id) for pid in ids])
    counts = {s: sum(x.counts.get(s, 0) for x in summaries) for s in JobStatus.values}
    return {
        "session_id": session_id,
        "counts": counts,
        "total": sum(counts.values()),
        "pending_approvals": sum(x.pending_approvals for x in summaries),
        "paused": bool(summaries) and all(x.paused for x in summaries),
        "principals": [x.as_dict() for x in summaries],
    }


_PRINCIPAL_PARAM = OpenApiParameter("principal", str, description="staff only: one principal's session")
_SESSION_PARAM = OpenApiParameter("session_id", {"type": "string", "maxLength": SESSION_ID_MAX},
                                  OpenApiParameter.PATH)
_SESSION_RESPONSE = inline_serializer("Session", {
    "session_id": serializers.CharField(),
    "counts": serializers.DictField(child=serializers.IntegerField()),
    "total": serializers.IntegerField(),
    "pending_approvals": serializers.IntegerField(),
    "paused": serializers.BooleanField(),
    "principals": serializers.ListField(child=serializers.DictField()),
})


class SessionDetailView(APIView):
    @extend_schema(parameters=[_SESSION_PARAM, _PRINCIPAL_PARAM], responses=_SESSION_RESPONSE)
    def get(self, request: Request, session_id: str) -> Response:
        return Response(_session_body(request, _session_id(session_id)))


class SessionPauseView(APIView):
    @extend_schema(request=PauseSerializer, parameters=[_SESSION_PARAM, _PRINCIPAL_PARAM], responses=_SESSION_RESPONSE)
    def post(self, request: Request, session_id: str) -> Response:
        session_id = _session_id(session_id)
        serializer = PauseSerializer(data=json_object_body(request))
        serializer.is_valid(raise_exception=True)
        username = request.query_params.get("principal") or None
        for pid in session_principal_ids(principal=request.user, session_id=session_id, username=username):
            session_pause(principal_id=pid, session_id=session_id, until=serializer.validated_data.get("until"))
        return Response(_session_body(request, session_id))


class SessionResumeView(APIView):
    @extend_schema(request=None, parameters=[_SESSION_PARAM, _PRINCIPAL_PARAM], responses=_SESSION_RESPONSE)
    def post(self, request: Request, session_id: str) -> Response:
        session_id = _session_id(session_id)
        username = request.query_params.get("principal") or None
        for pid in session_principal_ids(principal=request.user, session_id=session_id, username=username):
            session_resume(principal_id=pid, session_id=session_id)
        return Response(_session_body(request, session_id))
