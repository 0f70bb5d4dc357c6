"""``GET /api/v1/me``: who the caller is — principal, grants, staff flag and its sessions' counts."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from governance.selectors import principal_grants, webhook_secret_for
from jobs.selectors import principal_sessions, sessions_summarize

# Sessions listed, most recently used first.
SESSIONS_SHOWN = 100

_ME_RESPONSE = inline_serializer("Me", {
    "principal": serializers.CharField(),
    "principal_id": serializers.IntegerField(),
    "grants": serializers.ListField(child=serializers.CharField()),
    "is_staff": serializers.BooleanField(),
    "webhook_secret": serializers.CharField(allow_null=True, help_text="signs this principal's webhooks "
                                            "(POST /api/v1/me/webhook-secret/rotate makes a new one)"),
    "sessions": serializers.ListField(child=inline_serializer("MeSession", {
        "session_id": serializers.CharField(),
        "counts": serializers.DictField(child=serializers.IntegerField()),
        "total": serializers.IntegerField(),
        "open": serializers.IntegerField(),
        "pending_approvals": serializers.IntegerField(),
        "paused": serializers.BooleanField(),
        "paused_until": serializers.DateTimeField(allow_null=True),
        "max_concurrency": serializers.IntegerField(),
    })),
})


class MeView(APIView):
    @extend_schema(responses=_ME_RESPONSE,
                   description=f"The caller's principal, grants and staff flag, and its {SESSIONS_SHOWN} most "
                               "recently used sessions with their job counts by status.")
    def get(self, request: Request) -> Response:
        user: Any = request.user
        keys = [(int(user.pk), session) for session in principal_sessions(principal_id=user.pk, limit=SESSIONS_SHOWN)]
        sessions = []
        for summary in sessions_summarize(keys=keys):
            entry = summary.as_dict()
            entry.pop("principal")
            entry.pop("principal_id")
            sessions.append(entry)
        return Response({
            "principal": user.get_username(),
            "principal_id": user.pk,
            "grants": sorted(principal_grants(principal=user)),
            "is_staff": bool(user.is_staff),
            "webhook_secret": webhook_secret_for(principal=user),
            "sessions": sessions,
        })
