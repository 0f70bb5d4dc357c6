"""REST endpoints on the caller's own principal: who am I, and the webhook signing secret.

``GET /api/v1/me`` here is the minimal form (username and webhook secret); the secret is read
through :func:`governance.selectors.webhook_secret_for`, so a fuller ``/me`` only adds that one
field. ``POST /api/v1/me/webhook-secret/rotate`` makes a new secret; the old one keeps signing
beside it for ``WEBHOOK_SECRET_OVERLAP_S`` (24 h).
"""

from __future__ import annotations

from typing import Any

from django.urls import path
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from governance.selectors import webhook_secret_for
from governance.services import webhook_secret_rotate


class MeView(APIView):
    @extend_schema(
        operation_id="me",
        responses=inline_serializer("Me", {
            "username": serializers.CharField(),
            "webhook_secret": serializers.CharField(allow_null=True),
        }),
    )
    def get(self, request: Request) -> Response:
        body: dict[str, Any] = {
            "username": request.user.get_username(),
            "webhook_secret": webhook_secret_for(principal=request.user),
        }
        return Response(body)


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
    path("me", MeView.as_view(), name="me"),
    path("me/webhook-secret/rotate", WebhookSecretRotateView.as_view(), name="me-webhook-secret-rotate"),
]
