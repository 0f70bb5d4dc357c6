"""The caller's webhook signing secret (``GET /api/v1/me``, in jobs.api.me, shows it).

``POST /api/v1/me/webhook-secret/rotate`` makes a new secret; the old one keeps signing
beside it for ``WEBHOOK_SECRET_OVERLAP_S`` (24 h).
"""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from governance.services import webhook_secret_rotate


class WebhookSecretRotateView(APIView):
    @extend_schema(
        operation_id="me_webhook_secret_rotate",
        request=None,
        responses=inline_serializer("WebhookSecretRotated", {
            "webhook_secret": serializers.CharField(),
            "previous_valid_until": serializers.DateTimeField(allow_null=True),
        }),
    )
    def post(self, request: Request) -> Response:
        rotated = webhook_secret_rotate(principal=request.user)
        return Response({
            "webhook_secret": rotated.secret,
            "previous_valid_until": rotated.previous_valid_until.isoformat() if rotated.previous_valid_until else None,
        })


urlpatterns = [
    path("me/webhook-secret/rotate", WebhookSecretRotateView.as_view(), name="me-webhook-secret-rotate"),
]
