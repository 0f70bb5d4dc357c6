from __future__ import annotations

from typing import Any

from django.urls import reverse
from rest_framework import serializers

from audit.models import AuditStamp
from jobs.api.validation import StrictSerializer
from jobs.hooks import approval_gate
from jobs.models import Job, JobRun, JobStatus


class SubmitSerializer(StrictSerializer):
    """``POST /jobs``: one job to submit (docs/api.md)."""

    job_type = serializers.CharField(max_length=128)
    inputs = serializers.DictField()
    session_id = serializers.CharField(max_length=128)
    idempotency_key = serializers.CharField(max_length=255, required=False, allow_null=True)
    priority = serializers.IntegerField(required=False, default=0, min_value=-100, max_value=100)
    run_after = serializers.DateTimeField(required=False, allow_null=True)
    constraints = serializers.DictField(required=False, default=dict)
    trace_id = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    correlation_id = serializers.CharField(max_length=128, required=False, allow_blank=True, default="")
    conversation_id = serializers.CharField(max_length=128, required=False, allow_blank=True, default="")
    callback_url = serializers.URLField(max_length=500, required=False, allow_blank=True, default="")

    def validate_inputs(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise serializers.ValidationError("inputs must be a JSON object")
        return value


class SubmitResponseSerializer(serializers.Serializer):
    job_id = serializers.CharField()
    run_id = serializers.CharField()
    status = serializers.ChoiceField(choices=JobStatus.choices)
    status_url = serializers.CharField()
    stream_url = serializers.CharField()


class JobUrls:
    """Absolute status and stream URLs of jobs, from one ``reverse`` each per request (a batch
    answers a thousand of them)."""

    _MARK = "job_0mark0"

    def __init__(self, request: Any) -> None:
        self._detail = request.build_absolute_uri(reverse("job-detail", args=[self._MARK]))
        self._events = request.build_absolute_uri(reverse("job-events", args=[self._MARK]))

    def detail(self, job_id: str) -> str:
        return self._detail.replace(self._MARK, job_id)

    def events(self, job_id: str) -> str:
        return self._events.replace(self._MARK, job_id)


def submit_body(job: Job, request: Any, urls: JobUrls | None = None) -> dict[str, Any]:
    urls = urls or JobUrls(request)
    body: dict[str, Any] = {
        "job_id": job.id,
        "run_id": job.first_run_id,
        "status": job.submitted_status or job.status,
        "status_url": urls.detail(job.id),
        "stream_url": urls.events(job.id),
    }
    if job.status == JobStatus.BLOCKED:
        body["reason"] = job.reason
    return body


class JobRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobRun
        fields = ("run_id", "stage", "attempt", "worker", "started_at", "finished_at", "outcome",
                  "error", "error_class", "model_version", "tools_used")


class JobSerializer(serializers.ModelSerializer):
    job_id = serializers.CharField(source="id")
    progress = serializers.SerializerMethodField()
    approval = serializers.SerializerMethodField()
    links = serializers.SerializerMethodField()

    class Meta:
        model = Job
        # secret_inputs is deliberately absent: secrets never leave the worker.
        fields = (
            "job_id", "job_type", "status", "stage", "session_id", "trace_id", "correlation_id",
            "conversation_id", "scope", "risk", "permissions", "priority", "run_after", "attempts",
            "max_attempts", "inputs", "constraints", "idempotency_key", "proposal", "result", "error",
            "error_class", "reason", "policy_decision", "approval", "progress", "current_run_id",
            "created_at", "updated_at", "started_at", "finished_at", "links",
        )

    def get_progress(self, job: Job) -> dict[str, Any] | None:
        if job.progress_pct is None:
            return None
        return {"pct": job.progress_pct, "message": job.progress_message}

    def get_approval(self, job: Job) -> dict[str, Any] | None:
        return approval_gate().summary(job_id=job.pk)

    def get_links(self, job: Job) -> dict[str, str]:
        return {
            "self": reverse("job-detail", args=[job.pk]),
            "audit": reverse("job-audit", args=[job.pk]),
            "events": reverse("job-events", args=[job.pk]),
        }


class JobListSerializer(serializers.ModelSerializer):
    job_id = serializers.CharField(source="id")

    class Meta:
        model = Job
        fields = ("job_id", "job_type", "status", "stage", "session_id", "priority", "attempts",
                  "error_class", "created_at", "updated_at", "finished_at")


class AuditStampSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditStamp
        fields = ("seq", "created_at", "actor", "event", "from_status", "to_status", "details",
                  "prev_hash", "hash")


class JobAuditSerializer(serializers.Serializer):
    """What ``GET /jobs/{id}/audit`` answers: the job id and all its stamps in ``seq`` order."""

    job_id = serializers.CharField()
    stamps = AuditStampSerializer(many=True)


class JobDetailSerializer(JobSerializer):
    """``GET /jobs/{id}``: the job and one entry per run (for the schema; the view adds ``runs``)."""

    runs = JobRunSerializer(many=True, read_only=True)

    class Meta(JobSerializer.Meta):
        fields = (*JobSerializer.Meta.fields, "runs")  # type: ignore[assignment]


class SubmitBlockedSerializer(SubmitResponseSerializer):
    """``403`` from submit: the job was recorded as ``blocked``; the error body plus the job's ids."""

    code = serializers.ChoiceField(choices=["permission_denied", "policy_blocked"])
    detail = serializers.CharField()
    reason = serializers.CharField()
