"""``POST /api/v1/jobs/batch``: up to ``JOBS_BATCH_MAX`` submits in one call (``jobs.services.batch``).

Each item is the body of ``POST /api/v1/jobs`` and is answered as that endpoint would answer it,
in input order: ``{"index", "code": <HTTP status of that item>, ...the single endpoint's body}``.
An error body's own string code is carried as ``error`` (``code`` is the item's status).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiExample, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.errors import DomainError
from jobs.api.serializers import JobUrls, SubmitSerializer
from jobs.api.views import json_object_body, submit_answer, submit_spec
from jobs.services.batch import jobs_submit_batch
from jobs.services.submit import SubmitSpec

_BATCH_REQUEST = inline_serializer("BatchSubmit", {"jobs": serializers.ListField(child=SubmitSerializer())})
_BATCH_RESPONSE = inline_serializer("BatchSubmitResults", {
    "results": serializers.ListField(child=inline_serializer("BatchSubmitResult", {
        "index": serializers.IntegerField(help_text="position of the item in `jobs`"),
        "code": serializers.IntegerField(help_text="the status POST /api/v1/jobs answers: 202, 200, 400, 403, 409"),
        "job_id": serializers.CharField(required=False),
        "run_id": serializers.CharField(required=False),
        "status": serializers.CharField(required=False),
        "status_url": serializers.CharField(required=False),
        "stream_url": serializers.CharField(required=False),
        "error": serializers.CharField(required=False, help_text="the error body's code, e.g. invalid_inputs"),
        "detail": serializers.CharField(required=False),
        "errors": serializers.DictField(required=False),
    })),
})


def _item_answer(index: int, status: int, body: dict[str, Any]) -> dict[str, Any]:
    item = {"index": index, **body, "code": status}
    if "code" in body:
        item["error"] = body["code"]
    return item


class JobBatchView(APIView):
    @extend_schema(
        request=_BATCH_REQUEST,
        responses={200: _BATCH_RESPONSE},
        description=(
            "Submit up to `JOBS_BATCH_MAX` (default 1,000) jobs at once. Each item is validated, "
            "policy-gated, idempotency-checked and stamped exactly as `POST /api/v1/jobs`; the accepted "
            "ones are written in one transaction. The answer lists every item in input order with the "
            "status and body the single endpoint would have given it; a bad item never sinks the others."
        ),
        examples=[OpenApiExample("two jobs", request_only=True, value={"jobs": [
            {"job_type": "demo.noop", "inputs": {}, "session_id": "s1"},
            {"job_type": "demo.long_running", "inputs": {"steps": 3}, "session_id": "s1", "idempotency_key": "k-2"},
        ]})],
    )
    def post(self, request: Request) -> Response:
        items = json_object_body(request).get("jobs")
        if not isinstance(items, list) or not items:
            raise DomainError("invalid_request", "The body must be {\"jobs\": [...]} with at least one item.",
                              errors={"jobs": ["a non-empty list of submit bodies"]})
        if len(items) > settings.JOBS_BATCH_MAX:
            raise DomainError("invalid_request", f"At most {settings.JOBS_BATCH_MAX} jobs per batch.",
                              errors={"jobs": [f"{len(items)} items; the limit is {settings.JOBS_BATCH_MAX}"]})
        answers: list[dict[str, Any] | None] = [None] * len(items)
        specs: list[SubmitSpec] = []
        positions: list[int] = []
        # One serializer for every item: what ``is_valid`` runs, without building its fields 1,000 times.
        serializer = SubmitSerializer()
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                answers[index] = _item_answer(index, 400, {"code": "invalid_request",
                                                           "detail": "Each item must be a JSON object."})
                continue
            try:
                data = serializer.run_validation(item)
            except ValidationError as exc:
                answers[index] = _item_answer(index, 400, {"code": "invalid_request", "detail": "Invalid request.",
                                                           "errors": exc.detail})
                continue
            specs.append(submit_spec(data))
            positions.append(index)
        urls = JobUrls(request)
        outcomes = jobs_submit_batch(principal=request.user, specs=specs) if specs else []  # type: ignore[arg-type]
        for index, outcome in zip(positions, outcomes, strict=True):
            if isinstance(outcome, DomainError):
                answers[index] = _item_answer(index, outcome.status, outcome.as_dict())
            else:
                answers[index] = _item_answer(index, *submit_answer(outcome, request, urls))
        return Response({"results": answers})
