"""Writes on jobs: submit, and the decisions between stages. API, admin, tasks and commands call these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, partial
from typing import Any

import jsonschema
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.events import Event
from audit.services import canonical_json
from common.errors import DomainError
from common.validation import check_identifier, check_json, check_run_after, out_of_range
from governance.cache import GovernanceSnapshot, governance_snapshot
from governance.egress import callback_url_check
from governance.models import Decision
from governance.policy import policy_evaluate, redact_inputs
from governance.secrets import encrypt_secrets, legacy_request_hash, request_hmac, secret_strings, split_secrets
from governance.selectors import missing_permissions, principal_grants
from jobs.admission.dispatcher import dispatch_soon
from jobs.checkpoints import checkpoint_before, checkpoint_for_ack
from jobs.errors import UnknownJobType
from jobs.hooks import approval_gate, approval_open, approvals_open_bulk
from jobs.models import Job, JobStatus, Stage, new_trace_id
from jobs.registry import JobType, registry
from jobs.transitions import job_create, jobs_create_bulk

KNOWN_CONSTRAINTS = {"max_runtime_s", "requires_human_ack", "no_external_posting"}
PRIORITY_RANGE = (-100, 100)


@dataclass
class SubmitSpec:
    job_type: str
    inputs: dict[str, Any]
    session_id: str
    idempotency_key: str | None = None
    priority: int = 0
    run_after: datetime | None = None
    constraints: dict[str, Any] = field(default_factory=dict)
    trace_id: str = ""
    correlation_id: str = ""
    conversation_id: str = ""
    callback_url: str = ""


@dataclass
class SubmitResult:
    job: Job
    created: bool

    @property
    def blocked(self) -> bool:
        return self.job.status == JobStatus.BLOCKED


def _request_payload(spec: SubmitSpec) -> str:
    return canonical_json({
        "job_type": spec.job_type,
        "inputs": spec.inputs,
        "session_id": spec.session_id,
        "priority": spec.priority,
        "run_after": spec.run_after.isoformat() if spec.run_after else None,
        "constraints": spec.constraints,
        "callback_url": spec.callback_url,
    })


def _request_hashes(spec: SubmitSpec) -> tuple[str, str]:
    """(hash to store, hash a job stored before the HMAC carries) for ``spec``.

    An HMAC of the payload (secret fields included) under the server's key: equal payloads
    give equal hashes, and the stored hash (shown in the admin) confirms no guessed secret.
    """
    payload = _request_payload(spec).encode()
    return request_hmac(payload), legacy_request_hash(payload)


def _schema_errors(schema: dict[str, Any], inputs: dict[str, Any],
                   secret_fields: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Field (JSON path) → messages. jsonschema puts the failing value in its messages
    (``'s3cret' is too short``): for a secret field, or any message that would show a secret
    value, only the rule that failed is said."""
    validator = jsonschema.Draft202012Validator(schema)
    secrets = [s for s in secret_strings({k: inputs[k] for k in secret_fields if k in inputs}) if s]
    errors: dict[str, list[str]] = {}
    for error in validator.iter_errors(inputs):
        path = ".".join(str(p) for p in error.absolute_path) or "(root)"
        message = error.message
        in_secret = bool(error.absolute_path) and error.absolute_path[0] in secret_fields
        if in_secret or any(secret in message for secret in secrets):
            message = f"does not match the schema ({error.validator}); the value is secret and not shown"
        errors.setdefault(path, []).append(message)
    return errors


def _validate_constraints(constraints: dict[str, Any], job_type: JobType) -> dict[str, Any]:
    unknown = sorted(set(constraints) - KNOWN_CONSTRAINTS)
    if unknown:
        raise DomainError("invalid_constraints", f"unknown constraints: {', '.join(unknown)}",
                          errors={k: ["unknown constraint"] for k in unknown})
    out = dict(constraints)
    if "max_runtime_s" in out:
        value = out["max_runtime_s"]
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= job_type.max_runtime_s:
            raise DomainError(
                "invalid_constraints",
                f"max_runtime_s must be an integer from 1 to {job_type.max_runtime_s} for {job_type.name}",
                errors={"max_runtime_s": ["out of range"]},
            )
    for flag in ("requires_human_ack", "no_external_posting"):
        if flag in out and not isinstance(out[flag], bool):
            raise DomainError("invalid_constraints", f"{flag} must be a boolean", errors={flag: ["not a boolean"]})
    return out


def validate_inputs(*, job_type: JobType, inputs: Any) -> None:
    if not isinstance(inputs, dict):
        raise DomainError("invalid_inputs", "inputs must be a JSON object", errors={"(root)": ["not an object"]})
    check_json(inputs, where="inputs")
    errors = _schema_errors(job_type.input_schema, inputs, tuple(job_type.secret_fields))
    if errors:
        raise DomainError("invalid_inputs", "inputs do not match the job type's schema", errors=errors)


def _initial_status(decision: dict[str, Any]) -> tuple[str, str]:
    """(status, approval checkpoint) for a new admitted job: a checkpoint before the work
    parks it at once (even when an intake stage comes first), anything later waits its stage."""
    checkpoint = checkpoint_before(Stage.EXECUTE, decision=decision)
    if checkpoint:
        return JobStatus.PENDING_APPROVAL, checkpoint
    return JobStatus.QUEUED, ""


def _new_job(**values: Any) -> Job:
    """``Job(**values)`` (attribute names; the rest take their defaults), built positionally:
    Model.__init__'s keyword path costs three times as much, and a batch builds a thousand."""
    positional: Any = [values[f.attname] if f.attname in values else f.get_default() for f in Job._meta.concrete_fields]
    return Job(*positional)


class SubmitContext:
    """What every submit of one principal reads once: the governance snapshot (one read of the
    governance version; rules, grants and groups come from its cache). A batch shares one
    context across its items; it is taken on first use, so an idempotent replay reads nothing."""

    def __init__(self, principal: User) -> None:
        self.principal = principal

    @cached_property
    def snapshot(self) -> GovernanceSnapshot:
        return governance_snapshot()

    @cached_property
    def grants(self) -> set[str]:
        return principal_grants(principal=self.principal, snapshot=self.snapshot)


@dataclass
class PreparedSubmit:
    """One submit after every check: a new job to insert with its creation stamp, or (``created``
    False) the existing job an idempotent replay answers with."""

    job: Job
    created: bool
    event: str = ""
    actor: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    approvers: int = 0


def submit_prepare(
    *, spec: SubmitSpec, context: SubmitContext, existing: Callable[[str], Job | None],
) -> PreparedSubmit:
    """Everything a submit decides before anything is written; the single and the batch path
    both go through it. Raises ``DomainError`` for a refused request.

    Steps: (1) resolve the job type (the envelope's identifiers hold no control characters);
    (2) validate inputs (characters, depth, schema), constraints, priority and the callback URL's
    target (``callback_url_forbidden``, see ``governance.egress``); (3) an idempotency key already
    used by this principal (``existing(key)``) answers with its job (same payload) or raises
    ``idempotency_conflict``, then ``run_after`` must be within its horizon; (4) permission
    check — a miss makes a ``blocked`` job; (5) policy — block makes a ``blocked`` job, redact
    replaces fields, require_approval parks the job; (6) secret fields are split off and
    encrypted; (7) the job row and the details of its creation stamp are built (not saved).
    """
    principal = context.principal
    _check_envelope(spec)
    try:
        job_type = registry.get(spec.job_type)
    except UnknownJobType:
        raise DomainError("unknown_job_type", f"unknown job type {spec.job_type!r}") from None
    validate_inputs(job_type=job_type, inputs=spec.inputs)
    constraints = _validate_constraints(spec.constraints or {}, job_type)
    if isinstance(spec.priority, bool) or not PRIORITY_RANGE[0] <= spec.priority <= PRIORITY_RANGE[1]:
        raise out_of_range("priority", f"must be between {PRIORITY_RANGE[0]} and {PRIORITY_RANGE[1]}")
    callback_url_check(url=spec.callback_url)
    request_hash, legacy_hash = _request_hashes(spec)
    if spec.idempotency_key:
        found = existing(spec.idempotency_key)
        if found is not None:
            _check_same_payload(found, (request_hash, legacy_hash))
            return PreparedSubmit(found, created=False)
    # After the idempotent lookup: repeating an old submit answers its job, whenever it comes.
    check_run_after(spec.run_after)

    public_inputs, secrets = split_secrets(spec.inputs, job_type.secret_fields)
    decision = policy_evaluate(
        principal=principal, job_type=job_type.name, scope=job_type.scope, risk=job_type.risk,
        ack=job_type.ack, has_commit=job_type.has_commit(), inputs=public_inputs, snapshot=context.snapshot,
    )
    if constraints.get("requires_human_ack") and decision.action in (Decision.ALLOW, Decision.REDACT):
        decision.action = Decision.REQUIRE_APPROVAL
        decision.approvers = max(1, decision.approvers)
        decision.checkpoint = checkpoint_for_ack(has_commit=job_type.has_commit())
        decision.path.append("constraint:requires_human_ack")
    missing = missing_permissions(required=job_type.permissions, grants=context.grants)

    policy = decision.as_dict()
    status, checkpoint = _initial_status(policy)
    reason = ""
    event = Event.SUBMITTED
    if missing:
        status, reason, event = JobStatus.BLOCKED, f"missing permissions: {', '.join(missing)}", Event.BLOCKED
    elif decision.action == Decision.BLOCK:
        status, reason, event = JobStatus.BLOCKED, f"policy: {decision.reason}", Event.BLOCKED
    redacted: list[str] = []
    if decision.redact_fields:
        public_inputs, redacted = redact_inputs(public_inputs, decision.redact_fields)

    max_runtime = int(constraints.get("max_runtime_s", job_type.max_runtime_s))
    job = _new_job(
        trace_id=spec.trace_id or new_trace_id(),
        correlation_id=spec.correlation_id,
        conversation_id=spec.conversation_id,
        session_id=spec.session_id,
        principal_id=principal.pk,
        job_type=job_type.name,
        scope=job_type.scope,
        permissions=list(job_type.permissions),
        risk=str(job_type.risk),
        inputs=public_inputs,
        secret_inputs=encrypt_secrets(secrets),
        constraints=constraints,
        idempotency_key=spec.idempotency_key or None,
        request_hash=request_hash,
        priority=spec.priority,
        run_after=spec.run_after or timezone.now(),
        callback_url=spec.callback_url,
        status=status,
        submitted_status=status,
        stage=job_type.first_stage(),
        max_attempts=job_type.retry.max_attempts,
        max_runtime_s=max_runtime,
        policy_decision=policy,
        approval_checkpoint=checkpoint,
        reason=reason,
        error_class="policy_violation" if status == JobStatus.BLOCKED else "",
    )
    job.principal = principal
    if status == JobStatus.BLOCKED:
        job.finished_at = job.created_at
    details: dict[str, Any] = {
        "policy": policy,
        "redacted_fields": redacted,
        "secret_fields": sorted(secrets),
        "session_id": spec.session_id,
        "trace_id": job.trace_id,
        "correlation_id": spec.correlation_id,
        "conversation_id": spec.conversation_id,
    }
    if missing:
        details["missing_permissions"] = missing
    return PreparedSubmit(job, created=True, event=event, actor=f"principal:{principal.get_username()}",
                          details=details, approvers=decision.approvers)


def jobs_insert(*, prepared: list[PreparedSubmit]) -> None:
    """Insert new jobs with their creation stamps and open their approval requests, in the
    caller's transaction, and schedule one dispatch pass after commit. One job: an INSERT and
    its stamp; more (batch): one bulk statement each for the jobs (COPY on PostgreSQL), their
    creation stamps and their approval requests."""
    if len(prepared) == 1:
        item = prepared[0]
        job_create(job=item.job, event=item.event, actor=item.actor, details=item.details)
        if item.job.status == JobStatus.PENDING_APPROVAL:
            approval_open(job=item.job, checkpoint=item.job.approval_checkpoint, approvers=item.approvers)
    elif prepared:
        jobs_create_bulk(entries=[(item.job, item.event, item.actor, item.details) for item in prepared])
        pending = [(item.job, item.job.approval_checkpoint, item.approvers) for item in prepared
                   if item.job.status == JobStatus.PENDING_APPROVAL]
        if pending:
            approvals_open_bulk(items=pending)
    if any(item.job.status == JobStatus.QUEUED for item in prepared):
        dispatch_soon()


def job_submit(*, principal: User, spec: SubmitSpec) -> SubmitResult:
    """Validate, evaluate policy, stamp and queue one job.

    Steps: (1) :func:`submit_prepare` — validation, idempotency, permissions, policy, secrets;
    (2) insert + creation stamp in one transaction (a concurrent duplicate key loses on the
    unique constraint and is answered like an idempotent replay); (3) a dispatch pass runs after
    commit.
    """
    prepared = submit_prepare(spec=spec, context=SubmitContext(principal),
                              existing=partial(_job_with_key, principal))
    if not prepared.created:
        return SubmitResult(prepared.job, created=False)
    try:
        with transaction.atomic():
            jobs_insert(prepared=[prepared])
    except IntegrityError:
        if not spec.idempotency_key:
            raise
        existing = _job_with_key(principal, spec.idempotency_key)
        if existing is None:
            raise
        _check_same_payload(existing, (prepared.job.request_hash, _request_hashes(spec)[1]))
        return SubmitResult(existing, created=False)
    return SubmitResult(prepared.job, created=True)


def _check_envelope(spec: SubmitSpec) -> None:
    """The envelope's identifiers hold no control characters, whoever calls (REST, admin, MCP):
    they reach log lines and consoles."""
    for name in ("job_type", "session_id", "idempotency_key", "trace_id", "correlation_id",
                 "conversation_id", "callback_url"):
        value = getattr(spec, name)
        if value:
            check_identifier(str(value), where=name)


def _job_with_key(principal: User, key: str) -> Job | None:
    return Job.objects.filter(principal=principal, idempotency_key=key).first()


def _check_same_payload(existing: Job, hashes: tuple[str, str]) -> None:
    """Same key, other payload: ``idempotency_conflict`` (``hashes``: the HMAC, and the plain
    hash a job stored before the HMAC carries)."""
    if existing.request_hash not in hashes:
        raise DomainError(
            "idempotency_conflict",
            "this idempotency key was used with a different payload",
            job_id=existing.id,
        )


def next_stage_status(*, job: Job, next_stage: str) -> tuple[str, dict[str, Any]]:
    """Where a job goes after a stage succeeds: queued for the next stage, or a human first
    when the job's policy decision puts a checkpoint before it that is not approved yet. The
    caller opens the request (``approval_gate().open``) in the same transaction as the move."""
    checkpoint = checkpoint_before(next_stage, decision=job.policy_decision or {})
    if checkpoint and not approval_gate().granted(job_id=job.id, checkpoint=checkpoint):
        return JobStatus.PENDING_APPROVAL, {"approval_checkpoint": checkpoint}
    return JobStatus.QUEUED, {"approval_checkpoint": ""}
