"""REST endpoint for retention: ``POST /api/v1/jobs/cleanup`` (staff only).

A thin view over :func:`jobs.services.retention.retention_run`, the same service as the task
monitor and the daily beat task. ``dry_run`` defaults to true: deleting needs an explicit
``"dry_run": false``.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.errors import DomainError
from jobs.api.schema import error_responses
from jobs.api.views import json_object_body
from jobs.services.retention import retention_run


class CleanupSerializer(serializers.Serializer[Any]):
    # A century at most: beyond it the cutoff date does not exist (found by the fuzz run).
    older_than_days = serializers.IntegerField(min_value=0, max_value=36500)
    dry_run = serializers.BooleanField(default=True)


class JobsCleanupView(APIView):
    @extend_schema(
        operation_id="jobs_cleanup",
        request=CleanupSerializer,
        responses={**error_responses(403), 200: inline_serializer("CleanupReport", {
            "would_delete": serializers.IntegerField(required=False, help_text="dry run: jobs that would go"),
            "deleted": serializers.IntegerField(required=False, help_text="jobs deleted"),
            "dry_run": serializers.BooleanField(),
            "before": serializers.DateTimeField(),
            "chains": serializers.IntegerField(),
            "stamps": serializers.IntegerField(),
            "task_results": serializers.IntegerField(),
        })},
    )
    def post(self, request: Request) -> Response:
        if not request.user.is_staff:
            raise DomainError("permission_denied", "Only staff may run retention.")
        serializer = CleanupSerializer(data=json_object_body(request))
        serializer.is_valid(raise_exception=True)
        report = retention_run(older_than_days=serializer.validated_data["older_than_days"],
                               dry_run=serializer.validated_data["dry_run"])
        return Response(report.as_dict())
