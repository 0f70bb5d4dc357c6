"""REST endpoints for operator actions on finished jobs: replay from the dead-letter queue."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.errors import DomainError
from jobs.api.schema import error_responses
from jobs.models import Job
from jobs.services.operations import is_operator, job_replay


class ReplayResponseSerializer(serializers.Serializer[Any]):
    job_id = serializers.CharField()
    status = serializers.CharField()
    stage = serializers.CharField()


class JobReplayView(APIView):
    """Operators only (staff, or the ``jobs:replay`` grant); others get 404 like any unseen job."""

    @extend_schema(request=None, responses={202: ReplayResponseSerializer, **error_responses(403, 409)})
    def post(self, request: Request, job_id: str) -> Response:
        job = Job.objects.filter(pk=job_id).first()
        if job is None or not is_operator(request.user):
            if job is not None and job.principal_id == request.user.pk:
                raise DomainError("permission_denied", "Only operators may replay jobs.")
            raise DomainError("not_found", "No such job.")
        job = job_replay(job=job, actor=request.user)
        return Response({"job_id": job.pk, "status": job.status, "stage": job.stage}, status=202)
