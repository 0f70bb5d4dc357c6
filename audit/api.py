"""``GET /api/v1/audit/public-key``: the key that verifies signed audit exports."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.signing import public_key_document, signing_key_load


class AuditPublicKeySerializer(serializers.Serializer):
    algorithm = serializers.CharField(help_text="always ed25519")
    key_id = serializers.CharField(help_text="first 16 hex digits of SHA-256 over the raw public key")
    public_key_pem = serializers.CharField(help_text="SubjectPublicKeyInfo PEM")
    public_key_base64 = serializers.CharField(help_text="the 32 raw public key bytes, base64")


class AuditPublicKeyView(APIView):
    """Public by design: anyone holding an export may check it, no credentials needed."""

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]

    @extend_schema(
        responses=AuditPublicKeySerializer, auth=[],
        description="The Ed25519 public key of the audit export signing key (created on first use). Save the "
                    "answer and pass it to `manage.py verify_audit --export PATH --public-key FILE`.",
    )
    def get(self, request: Request) -> Response:
        return Response(public_key_document(signing_key_load().public_key()))
