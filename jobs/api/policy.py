"""``POST /api/v1/policy/simulate``: the policy what-if over recorded jobs (staff only)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from governance.simulate import DRAFT_FIELDS, MAX_DRAFT_RULES, draft_rules_validate
from jobs.api.schema import error_responses
from jobs.api.views import json_object_body
from jobs.services.policy_whatif import policy_simulate


class PolicySimulateSerializer(serializers.Serializer):
    rules = serializers.ListField(
        child=serializers.JSONField(), min_length=1, max_length=MAX_DRAFT_RULES,
        help_text=f"Draft rules, each an object with PolicyRule fields: {', '.join(DRAFT_FIELDS)}.",
    )
    since = serializers.DateTimeField(required=False, allow_null=True,
                                      help_text="Start of the window (default: 7 days ago).")


class PolicySimulateBucketSerializer(serializers.Serializer):
    evaluated = serializers.IntegerField()
    changed = serializers.IntegerField()
    transitions = serializers.DictField(child=serializers.IntegerField())


class PolicySimulateResponseSerializer(serializers.Serializer):
    since = serializers.DateTimeField()
    evaluated = serializers.IntegerField(help_text="recorded submissions evaluated")
    changed = serializers.IntegerField(help_text="submissions whose decision would change")
    skipped = serializers.IntegerField(help_text="submissions of job types no longer registered")
    transitions = serializers.DictField(child=serializers.IntegerField(), help_text='"<before>→<after>" → count')
    by_job_type = serializers.DictField(child=PolicySimulateBucketSerializer())
    by_principal = serializers.DictField(child=PolicySimulateBucketSerializer())
    examples = serializers.DictField(child=serializers.ListField(child=serializers.CharField()),
                                     help_text="a few job ids per transition")
    draft_rules = serializers.ListField(child=serializers.DictField())


class PolicySimulateView(APIView):
    """Staff only: anyone else gets ``403 permission_denied``. Reads only; nothing is written."""

    permission_classes = [IsAdminUser]

    @extend_schema(
        request=PolicySimulateSerializer,
        responses={200: PolicySimulateResponseSerializer, **error_responses(403)},
        examples=[OpenApiExample(
            "block a job type",
            request_only=True,
            value={"rules": [{"order": 0, "name": "freeze crm", "job_type": "crm.*", "decision": "block",
                              "reason": "incident 42"}], "since": "2026-11-20T00:00:00Z"},
        )],
        description="Evaluate every job recorded since `since` under the enabled policy rules and under the "
                    "enabled rules plus the draft `rules`, and count what would change. No side effects.",
    )
    def post(self, request: Request) -> Response:
        body = PolicySimulateSerializer(data=json_object_body(request))
        body.is_valid(raise_exception=True)
        drafts = draft_rules_validate(rules=body.validated_data["rules"])  # 400 invalid_draft_rules
        report = policy_simulate(draft_rules=drafts, since=body.validated_data.get("since"))
        return Response(report.as_dict())
