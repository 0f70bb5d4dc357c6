"""``GET /api/v1/approvals/stats``: approval analytics for staff and approvers."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from approvals.admin_stats import can_see_stats
from approvals.analytics import approval_stats
from jobs.api.schema import error_responses


class IsStaffOrApprover(BasePermission):
    message = "Approval analytics are for staff and approvers (an approve:<scope> grant)."

    def has_permission(self, request: Request, view: Any) -> bool:
        return can_see_stats(request.user)


class DurationsSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    p50_s = serializers.FloatField(allow_null=True)
    p90_s = serializers.FloatField(allow_null=True)


class ReviewerLoadSerializer(serializers.Serializer):
    reviewer = serializers.CharField()
    decisions = serializers.IntegerField()
    approved = serializers.IntegerField()
    denied = serializers.IntegerField()
    modified_inputs = serializers.IntegerField()
    p50_s = serializers.FloatField(allow_null=True)


class OverdueRequestSerializer(serializers.Serializer):
    approval_id = serializers.CharField()
    job_id = serializers.CharField()
    job_type = serializers.CharField()
    risk = serializers.CharField()
    scope = serializers.CharField()
    age_s = serializers.FloatField()


class ApprovalStatsSerializer(serializers.Serializer):
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    sla_s = serializers.IntegerField()
    requests = serializers.IntegerField(help_text="requests created in the window")
    by_status = serializers.DictField(child=serializers.IntegerField())
    rates = serializers.DictField(child=serializers.FloatField(allow_null=True),
                                  help_text="approve / deny / expire, over approved + denied + expired")
    time_to_decision = DurationsSerializer()
    time_to_decision_by_risk = serializers.DictField(child=DurationsSerializer())
    time_to_decision_by_scope = serializers.DictField(child=DurationsSerializer())
    pending = serializers.IntegerField(help_text="pending now, whenever created")
    pending_past_sla = serializers.IntegerField()
    oldest_pending_age_s = serializers.FloatField(allow_null=True)
    overdue = OverdueRequestSerializer(many=True)
    reviewers = ReviewerLoadSerializer(many=True)
    approve_decisions = serializers.IntegerField()
    modified_decisions = serializers.IntegerField()
    modified_input_rate = serializers.FloatField(allow_null=True)


class _Query(serializers.Serializer):
    since = serializers.DateTimeField(required=False)


class ApprovalStatsView(APIView):
    """Staff, or holders of an approver grant; others get ``403 permission_denied``."""

    permission_classes = [IsStaffOrApprover]

    @extend_schema(
        parameters=[OpenApiParameter("since", str, description="ISO 8601 start of the window (default 7 days ago)")],
        responses={200: ApprovalStatsSerializer, **error_responses(403)},
        description="Time to decision p50/p90 by risk and scope, approve/deny/expire rates, requests pending "
                    "past APPROVAL_SLA_S, load per reviewer and the modified-input rate.",
    )
    def get(self, request: Request) -> Response:
        query = _Query(data=request.query_params)
        query.is_valid(raise_exception=True)
        stats = approval_stats(since=query.validated_data.get("since"))
        return Response(stats.as_dict())
