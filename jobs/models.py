"""The job envelope (``Job``), its stage attempts (``JobRun``) and the effect ledger.

Status changes never happen by assigning ``job.status`` and saving: they go through
``jobs.transitions.job_transition``, a guarded UPDATE with its audit stamp in the same
transaction.
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


def new_job_id() -> str:
    return "job_" + secrets.token_urlsafe(18)


def new_run_id() -> str:
    return "run_" + secrets.token_urlsafe(12)


def new_trace_id() -> str:
    return secrets.token_hex(16)


class JobStatus(models.TextChoices):
    BLOCKED = "blocked"
    PENDING_APPROVAL = "pending_approval"
    QUEUED = "queued"
    RUNNING = "running"
    RETRY_SCHEDULED = "retry_scheduled"
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset(
    {JobStatus.BLOCKED, JobStatus.SUCCEEDED, JobStatus.CANCELLED, JobStatus.DEAD_LETTERED}
)


class Stage(models.TextChoices):
    INTAKE = "intake"
    EXECUTE = "execute"
    FINALIZE = "finalize"


class ErrorClass(models.TextChoices):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    POLICY_VIOLATION = "policy_violation"
    TIMEOUT = "timeout"
    RETRIES_EXHAUSTED = "retries_exhausted"
    WORKER_LOST = "worker_lost"
    POISON = "poison"
    CANCELLED = "cancelled"


class Job(models.Model):
    id = models.CharField(primary_key=True, max_length=64, default=new_job_id, editable=False)
    trace_id = models.CharField(max_length=64, default=new_trace_id)
    correlation_id = models.CharField(max_length=128, blank=True, default="")
    conversation_id = models.CharField(max_length=128, blank=True, default="")
    session_id = models.CharField(max_length=128)
    principal = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="jobs")
    job_type = models.CharField(max_length=128)
    scope = models.CharField(max_length=64)
    permissions = models.JSONField(default=list, blank=True)
    risk = models.CharField(max_length=16, default="low")
    inputs = models.JSONField(default=dict, blank=True)
    # Secret input fields, encrypted (Fernet); never serialised to the API, admin or stamps.
    secret_inputs = models.TextField(blank=True, default="")
    constraints = models.JSONField(default=dict, blank=True)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_hash = models.CharField(max_length=64, blank=True, default="")
    priority = models.SmallIntegerField(default=0)
    run_after = models.DateTimeField(default=timezone.now)
    callback_url = models.URLField(max_length=500, blank=True, default="")

    status = models.CharField(max_length=32, choices=JobStatus.choices, default=JobStatus.QUEUED)
    stage = models.CharField(max_length=16, choices=Stage.choices, default=Stage.EXECUTE)
    # Attempts of the current stage (reset when a stage succeeds or a job is replayed).
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    # Claims of the current stage; more than JOBS_MAX_CLAIMS_PER_STAGE without a finish is poison.
    claims = models.PositiveIntegerField(default=0)
    max_runtime_s = models.PositiveIntegerField(default=60)

    dispatched_at = models.DateTimeField(null=True, blank=True)
    dispatch_token = models.CharField(max_length=64, blank=True, default="")
    current_run_id = models.CharField(max_length=64, blank=True, default="")
    # The run id answered at submit; the first claim takes it.
    first_run_id = models.CharField(max_length=64, default=new_run_id)
    submitted_status = models.CharField(max_length=32, blank=True, default="")
    lease_owner = models.CharField(max_length=200, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    progress_pct = models.FloatField(null=True, blank=True)
    progress_message = models.CharField(max_length=500, blank=True, default="")

    normalized_inputs = models.JSONField(null=True, blank=True)
    proposal = models.JSONField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    error_class = models.CharField(max_length=32, choices=ErrorClass.choices, blank=True, default="")
    reason = models.CharField(max_length=200, blank=True, default="")

    policy_decision = models.JSONField(default=dict, blank=True)
    approval_checkpoint = models.CharField(max_length=32, blank=True, default="")

    # The head of the job's audit chain (its last stamp's seq and hash), moved in the same
    # UPDATE as every status change (jobs.chain): a stamp needs no lookup of the chain, and a
    # writer that built on an old head matches no row and re-reads it.
    chain_seq = models.PositiveIntegerField(default=0)
    chain_hash = models.CharField(max_length=64, blank=True, default="")

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=("principal", "idempotency_key"),
                condition=Q(idempotency_key__isnull=False),
                name="job_principal_idempotency_key_uniq",
            ),
        ]
        indexes = [
            # The dispatcher: ready queued jobs in priority order.
            models.Index(
                fields=("status", "-priority", "run_after", "created_at"), name="job_dispatch_idx"
            ),
            # The API list: a principal's jobs by session/status, newest first.
            models.Index(fields=("principal", "session_id", "status", "-created_at"), name="job_api_idx"),
            models.Index(fields=("principal", "-created_at"), name="job_principal_recent_idx"),
            # The reaper: running jobs by lease expiry.
            models.Index(fields=("status", "lease_expires_at"), name="job_lease_idx"),
            models.Index(fields=("session_id", "status"), name="job_session_status_idx"),
            # Fair share: a session's ready jobs in admission order (the dispatcher's window).
            models.Index(
                fields=("principal", "session_id", "-priority", "run_after", "created_at"),
                condition=Q(status="queued"),
                name="job_fair_share_idx",
            ),
            # In-flight counts: published, not yet claimed messages.
            models.Index(
                fields=("dispatched_at",),
                condition=Q(status="queued", dispatched_at__isnull=False),
                name="job_published_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.job_type} [{self.status}]"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class RunOutcome(models.TextChoices):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"
    REFUSED = "refused"


class JobRun(models.Model):
    """One attempt of one stage of a job."""

    run_id = models.CharField(primary_key=True, max_length=64, default=new_run_id)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="runs")
    stage = models.CharField(max_length=16, choices=Stage.choices)
    attempt = models.PositiveIntegerField()
    worker = models.CharField(max_length=200, blank=True, default="")
    celery_task_id = models.CharField(max_length=64, blank=True, default="")
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=RunOutcome.choices, default=RunOutcome.RUNNING)
    error = models.TextField(blank=True, default="")
    error_class = models.CharField(max_length=32, blank=True, default="")
    model_version = models.CharField(max_length=100, blank=True, default="")
    tools_used = models.JSONField(default=list, blank=True)

    class Meta:
        indexes = [models.Index(fields=("job", "started_at"), name="jobrun_job_idx")]

    def __str__(self) -> str:
        return f"{self.run_id} {self.stage}#{self.attempt} {self.outcome}"


class EffectRecord(models.Model):
    """The effect ledger: one row per external effect, keyed by job type and effect key.

    A commit re-run after its effect was recorded gets the recorded result back instead of
    writing again (exactly-once effects on top of at-least-once delivery).
    """

    job_type = models.CharField(max_length=128)
    effect_key = models.CharField(max_length=255)
    job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, related_name="effects")
    result = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("job_type", "effect_key"), name="effect_type_key_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.job_type}:{self.effect_key}"


# --- Control: fair share, pause, rate limits ---------------------------------------------------


class PrincipalControl(models.Model):
    """Per-principal defaults for its agent sessions (unset: ``JOBS_SESSION_MAX_CONCURRENCY``)."""

    principal = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="job_control"
    )
    session_max_concurrency = models.PositiveIntegerField(
        null=True, blank=True, help_text="Default in-flight cap for each of this principal's sessions."
    )
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"control for principal {self.principal_id}"


class SessionControl(models.Model):
    """One agent session (a principal's ``session_id``): its cap and whether it is paused.

    A session is scoped per principal: two principals using the same ``session_id`` have two
    sessions. No row means the defaults (not paused, the principal's or global cap).
    """

    principal = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    session_id = models.CharField(max_length=128)
    max_concurrency = models.PositiveIntegerField(
        null=True, blank=True, help_text="In-flight cap of this session (unset: the principal's default)."
    )
    paused = models.BooleanField(default=False)
    paused_until = models.DateTimeField(null=True, blank=True, help_text="Paused until this time.")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("principal", "session_id"), name="session_control_uniq")
        ]

    def __str__(self) -> str:
        return f"session {self.session_id} of principal {self.principal_id}"


class JobTypeControl(models.Model):
    """Pause and rate limit for one job type, across all sessions."""

    job_type = models.CharField(max_length=128, unique=True)
    paused = models.BooleanField(default=False)
    paused_until = models.DateTimeField(null=True, blank=True)
    rate_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="At most this many admissions per rate period (unset: no limit)."
    )
    rate_period_s = models.PositiveIntegerField(default=60)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"control for {self.job_type}"


class DeadLetteredJob(Job):
    """The dead-letter queue: the admin's view of jobs in ``dead_lettered`` (a proxy, no table)."""

    class Meta:
        proxy = True
        verbose_name = "dead-lettered job"
        verbose_name_plural = "dead-letter queue"
