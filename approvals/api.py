"""REST endpoints for approvals and the operator's replay: thin views over the services."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.selectors import approvals_visible_to
from approvals.serializers import (
    ApprovalDetailSerializer,
    ApprovalListSerializer,
    ApproveSerializer,
    DenySerializer,
)
from approvals.services import approval_approve, approval_deny
from common.errors import DomainError
from jobs.api.schema import error_responses


def _approval_or_404(request: Request, approval_id: str) -> ApprovalRequest:
    """The request by its public id if the caller may review it (holds its approver grant).

    Reading and deciding look it up the same way: to anyone else every id answers 404, so
    neither the existence, the state (``already_decided``) nor the grant it needs
    (``missing_permission``) of someone else's request can be probed. The decision services
    still make every check (self-approval, expiry, votes).
    """
    approval = approvals_visible_to(principal=request.user).filter(public_id=approval_id).first()
    if approval is None:
        raise DomainError("not_found", "No such approval request.")
    return approval


class ApprovalListView(ListAPIView):
    serializer_class = ApprovalListSerializer

    def get_queryset(self) -> Any:
        status = self.request.query_params.get("status") or None
        if status and status not in ApprovalStatus.values:
            raise DomainError("invalid_request", f"unknown status {status!r}",
                           errors={"status": [f"must be one of {', '.join(ApprovalStatus.values)}"]})
        return approvals_visible_to(principal=self.request.user, status=status)

    @extend_schema(parameters=[OpenApiParameter("status", str, enum=ApprovalStatus.values)])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class ApprovalDetailView(APIView):
    @extend_schema(responses=ApprovalDetailSerializer)
    def get(self, request: Request, approval_id: str) -> Response:
        return Response(ApprovalDetailSerializer(_approval_or_404(request, approval_id)).data)


class ApprovalApproveView(APIView):
    @extend_schema(request=ApproveSerializer,
                   responses={200: ApprovalDetailSerializer, **error_responses(403, 409)})
    def post(self, request: Request, approval_id: str) -> Response:
        approval = _approval_or_404(request, approval_id)
        body = ApproveSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        approval = approval_approve(approval=approval, actor=request.user,  # type: ignore[arg-type]
                                    comment=body.validated_data["comment"],
                                    inputs=body.validated_data.get("inputs"))
        return Response(ApprovalDetailSerializer(approval).data)


class ApprovalDenyView(APIView):
    @extend_schema(request=DenySerializer,
                   responses={200: ApprovalDetailSerializer, **error_responses(403, 409)})
    def post(self, request: Request, approval_id: str) -> Response:
        approval = _approval_or_404(request, approval_id)
        body = DenySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        approval = approval_deny(approval=approval, actor=request.user,  # type: ignore[arg-type]
                                 comment=body.validated_data["comment"])
        return Response(ApprovalDetailSerializer(approval).data)
