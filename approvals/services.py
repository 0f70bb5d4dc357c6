"""Approval writes: open a request at a checkpoint, approve, deny, expire.

The API (approvals.api), the admin console (approvals.admin) and the beat task
(approvals.tasks) all call these; none of them decides anything on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from approvals.models import ApprovalDecision, ApprovalRequest, ApprovalStatus
from audit.events import Event
from audit.services import ChainHead
from common.errors import DomainError
from governance.models import Checkpoint, Decision
from governance.policy import policy_evaluate, redact_inputs
from governance.secrets import decrypt_secrets
from governance.selectors import missing_permissions, principal_grants
from jobs.admission.dispatcher import dispatch_soon
from jobs.chain import job_stamp, jobs_stamp_bulk
from jobs.metrics import approval_decided
from jobs.models import ErrorClass, Job, JobStatus
from jobs.registry import registry
from jobs.services.submit import validate_inputs
from jobs.transitions import job_transition


def approval_request_open(
    *, job: Job, checkpoint: str, approvers: int, event: str = Event.APPROVAL_REQUESTED
) -> ApprovalRequest | None:
    """Open the pending request for ``job`` at ``checkpoint`` (idempotent).

    Called through :func:`jobs.hooks.approval_open` in the same transaction that moved the job
    to ``pending_approval``, so the two commit together or not at all.
    """
    if not Job.objects.filter(pk=job.pk, status=JobStatus.PENDING_APPROVAL).exists():
        return None
    try:
        with transaction.atomic():
            request = ApprovalRequest.objects.create(
                job=job,
                checkpoint=checkpoint,
                risk=job.risk,
                required_approvals=max(1, approvers),
                approver_permission=f"approve:{job.scope}",
                expires_at=timezone.now() + timedelta(seconds=settings.APPROVAL_TTL_S),
            )
            job_stamp(
                job_id=job.pk,
                event=event,
                details={
                    "approval_id": request.public_id,
                    "checkpoint": checkpoint,
                    "required_approvals": request.required_approvals,
                    "approver_permission": request.approver_permission,
                },
            )
            return request
    except IntegrityError:
        return ApprovalRequest.objects.filter(
            job=job, checkpoint=checkpoint, status=ApprovalStatus.PENDING
        ).first()


def approval_requests_open_bulk(*, items: list[tuple[Job, str, int]]) -> list[ApprovalRequest]:
    """Open the pending requests of many new jobs (``(job, checkpoint, approvers)``) at once.

    For batch submit, through :func:`jobs.hooks.approvals_open_bulk`: the jobs were just inserted
    ``pending_approval`` in the caller's transaction, so none has a request yet. One INSERT of
    requests and one of their ``approval_requested`` stamps, the same rows and stamps
    :func:`approval_request_open` writes one by one.
    """
    if not items:
        return []
    now = timezone.now()
    expires = now + timedelta(seconds=settings.APPROVAL_TTL_S)
    requests = ApprovalRequest.objects.bulk_create([
        ApprovalRequest(job=job, checkpoint=checkpoint, risk=job.risk, required_approvals=max(1, approvers),
                        approver_permission=f"approve:{job.scope}", expires_at=expires, created_at=now)
        for job, checkpoint, approvers in items
    ])
    heads = {job.id: ChainHead(job.chain_seq, job.chain_hash) for job, _, _ in items}
    jobs_stamp_bulk([
        {"job_id": request.job_id, "event": Event.APPROVAL_REQUESTED, "at": now, "details": {
            "approval_id": request.public_id, "checkpoint": request.checkpoint,
            "required_approvals": request.required_approvals, "approver_permission": request.approver_permission,
        }}
        for request in requests
    ], heads=heads)
    return requests


# --- deciding ---------------------------------------------------------------------------------


def actor_label(user: AbstractBaseUser) -> str:
    """How a person appears in stamps (the same form job_submit uses for submitters)."""
    return f"principal:{user.get_username()}"


def _check_decider(request: ApprovalRequest, actor: AbstractBaseUser, now: datetime) -> None:
    """Checks shared by approve and deny, on a request row locked by the caller."""
    if request.status != ApprovalStatus.PENDING:
        raise DomainError("already_decided", f"this approval is already {request.status}")
    if request.expires_at <= now:
        raise DomainError("expired", "this approval request has expired")
    if request.job.principal_id == actor.pk:
        raise DomainError("self_approval", "nobody may decide on a job they submitted")
    missing = missing_permissions(required=[request.approver_permission],
                                  grants=principal_grants(principal=actor))
    if missing:
        raise DomainError("missing_permission", f"deciding needs the grant {request.approver_permission}",
                            missing_permissions=missing)
    if request.decisions.filter(approver_id=actor.pk).exists():
        raise DomainError("already_voted", "you have already decided on this request")


def _lock_pending(approval: ApprovalRequest) -> ApprovalRequest:
    """Lock the request row: concurrent decisions on one request are serialised here."""
    return ApprovalRequest.objects.select_for_update().select_related("job").get(pk=approval.pk)


def _decide(
    *, approval: ApprovalRequest, actor: AbstractBaseUser, now: datetime,
    apply: Callable[[ApprovalRequest], None],
) -> ApprovalRequest:
    """The frame of every decision: lock the request, check the decider, ``apply`` the decision
    in the same transaction. A request found past its expiry is expired first (in its own
    transaction, as the beat task would) and the decision refused with ``expired``."""
    expired_now = False
    with transaction.atomic():
        request = _lock_pending(approval)
        if request.status == ApprovalStatus.PENDING and request.expires_at <= now:
            expired_now = True
        else:
            _check_decider(request, actor, now)
            apply(request)
    if expired_now:
        approvals_expire(now=now, ids=[approval.pk])
        raise DomainError("expired", "this approval request has expired")
    request.refresh_from_db()
    if request.decided_at is not None:
        approval_decided(checkpoint=request.checkpoint, decision=request.status, requested_at=request.created_at,
                         decided_at=request.decided_at)
    return request


@dataclass
class _Modified:
    inputs: dict[str, Any]
    fields: list[str]
    decision: dict[str, Any]
    redacted: list[str]


def _recheck_inputs(request: ApprovalRequest, changes: Any) -> _Modified:
    """Merge an approver's changes over the job's inputs, re-validate and re-evaluate policy.

    Steps: (1) changes must be an object and may not touch secret fields (they are never shown,
    so nobody can knowingly change them); (2) the merged inputs, with the stored secrets put
    back in, must match the job type's schema; (3) the policy is evaluated again for the
    submitting principal — ``block`` refuses the change, a rule asking for more approvers raises
    the count, ``redact`` fields are replaced before storage.
    """
    job = request.job
    if not isinstance(changes, dict) or not changes:
        raise DomainError("invalid_inputs", "inputs must be a non-empty JSON object of changed fields")
    job_type = registry.get(job.job_type)
    secret_touched = sorted(set(changes) & set(job_type.secret_fields))
    if secret_touched:
        raise DomainError("invalid_inputs", "secret fields cannot be changed by a reviewer",
                            errors={f: ["secret field"] for f in secret_touched})
    merged = {**job.inputs, **changes}
    try:
        validate_inputs(job_type=job_type, inputs={**merged, **decrypt_secrets(job.secret_inputs)})
    except DomainError as exc:
        raise DomainError("invalid_inputs", exc.detail, **exc.extra) from None  # same code, reviewer's words
    decision = policy_evaluate(
        principal=job.principal, job_type=job_type.name, scope=job_type.scope, risk=str(job_type.risk),
        ack=job_type.ack, has_commit=job_type.has_commit(), inputs=merged,
    )
    if decision.action == Decision.BLOCK:
        raise DomainError("policy_blocked", f"policy blocks the modified inputs: {decision.reason}",
                            policy=decision.as_dict())
    redacted: list[str] = []
    if decision.redact_fields:
        merged, redacted = redact_inputs(merged, decision.redact_fields)
    fields = sorted(k for k in set(merged) | set(job.inputs) if merged.get(k) != job.inputs.get(k))
    return _Modified(inputs=merged, fields=fields, decision=decision.as_dict(), redacted=redacted)


def approval_approve(
    *, approval: ApprovalRequest, actor: AbstractBaseUser, comment: str = "", inputs: dict[str, Any] | None = None
) -> ApprovalRequest:
    """Record one approval; the last required one releases the job.

    Steps: (1) lock the request and check the decider (pending, not expired, not the submitter,
    holds the approver grant, has not voted); (2) modified inputs are re-validated and re-checked
    by policy (see ``_recheck_inputs``) and stored on the job at once; (3) the decision row and
    its stamp; (4) when distinct approvals reach the required count the request is approved and
    the job moves pending_approval → queued and is dispatched after commit. Changed inputs at
    ``before_commit`` send the job back to its first stage to draft again (its proposal came
    from the old inputs), and the new proposal waits for a new review.
    """
    now = timezone.now()

    def apply(request: ApprovalRequest) -> None:
        job = request.job
        if job.status != JobStatus.PENDING_APPROVAL:
            raise DomainError("already_decided", f"the job is no longer waiting (it is {job.status})")
        modified = _recheck_inputs(request, inputs) if inputs is not None else None
        if modified is not None:
            required = max(request.required_approvals, int(modified.decision.get("approvers") or 0))
            if required != request.required_approvals:
                request.required_approvals = required
                request.save(update_fields=["required_approvals"])
            Job.objects.filter(pk=job.pk).update(inputs=modified.inputs, policy_decision=modified.decision,
                                                 updated_at=now)
        ApprovalDecision.objects.create(
            request=request, approver_id=actor.pk, approve=True, comment=comment,
            modified_inputs={"fields": modified.fields} if modified else None, created_at=now,
        )
        approvals = request.decisions.filter(approve=True).count()
        job_stamp(
            job_id=job.pk, event=Event.APPROVAL_GRANTED, actor=actor_label(actor), at=now,
            details={
                "approval_id": request.public_id, "checkpoint": request.checkpoint, "comment": comment,
                "approvals": approvals, "required_approvals": request.required_approvals,
                # Field names only: values may be sensitive and are on the job row anyway.
                "modified_fields": modified.fields if modified else [],
                "redacted_fields": modified.redacted if modified else [],
                **({"policy": modified.decision} if modified else {}),
            },
        )
        if modified is not None and request.checkpoint == Checkpoint.BEFORE_COMMIT:
            request.inputs_modified = True
            request.save(update_fields=["inputs_modified"])
        if approvals >= request.required_approvals:
            _release(request, job=job, actor=actor, now=now)

    return _decide(approval=approval, actor=actor, now=now, apply=apply)


def _release(request: ApprovalRequest, *, job: Job, actor: AbstractBaseUser, now: datetime) -> None:
    updates: dict[str, Any] = {"approval_checkpoint": "", "dispatched_at": None, "dispatch_token": ""}
    redraft = request.inputs_modified
    if redraft:
        job_type = registry.get(job.job_type)
        updates.update(stage=job_type.first_stage(), normalized_inputs=None, proposal=None)
    prior = job_transition(
        job_id=job.pk, to=JobStatus.QUEUED, allowed_from=[JobStatus.PENDING_APPROVAL], event=Event.APPROVED,
        actor=actor_label(actor), updates=updates,
        details={"approval_id": request.public_id, "checkpoint": request.checkpoint,
                 "approvers": list(request.decisions.filter(approve=True).values_list("approver__username",
                                                                                       flat=True)),
                 "redraft": redraft},
    )
    if prior is None:
        raise DomainError("already_decided", "the job is no longer waiting")
    request.status = ApprovalStatus.APPROVED
    request.decided_at = now
    request.save(update_fields=["status", "decided_at"])
    dispatch_soon()


def approval_deny(*, approval: ApprovalRequest, actor: AbstractBaseUser, comment: str = "") -> ApprovalRequest:
    """One deny ends the job: request denied, job pending_approval → cancelled (reason ``denied``)."""
    now = timezone.now()

    def apply(request: ApprovalRequest) -> None:
        ApprovalDecision.objects.create(request=request, approver_id=actor.pk, approve=False, comment=comment,
                                        created_at=now)
        prior = job_transition(
            job_id=request.job_id, to=JobStatus.CANCELLED, allowed_from=[JobStatus.PENDING_APPROVAL],
            event=Event.APPROVAL_DENIED, actor=actor_label(actor),
            details={"approval_id": request.public_id, "checkpoint": request.checkpoint, "comment": comment},
            updates={"reason": "denied", "error_class": ErrorClass.CANCELLED, "approval_checkpoint": ""},
        )
        if prior is None:
            raise DomainError("already_decided", "the job is no longer waiting")
        request.status = ApprovalStatus.DENIED
        request.decided_at = now
        request.save(update_fields=["status", "decided_at"])
        dispatch_soon()  # a session slot may have been freed

    return _decide(approval=approval, actor=actor, now=now, apply=apply)


def approvals_expire(*, now: datetime, ids: list[int] | None = None, limit: int = 500) -> int:
    """Expire pending requests past ``expires_at``: each job → cancelled (reason ``expired``).

    Also closes pending requests whose job already left pending_approval some other way (a bulk
    cancel), so the review queue never shows work nobody can decide. Each request is handled in
    its own transaction with its row locked (``skip_locked``: a request being decided right now
    is left to that decision). Returns how many jobs were expired.
    """
    qs = ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING)
    if ids is not None:
        qs = qs.filter(pk__in=ids)
    stale = qs.filter(expires_at__lte=now) | qs.exclude(job__status=JobStatus.PENDING_APPROVAL)
    expired = 0
    for pk in list(stale.order_by("expires_at").values_list("pk", flat=True)[:limit]):
        with transaction.atomic():
            request = (ApprovalRequest.objects.select_for_update(skip_locked=True)
                       .filter(pk=pk, status=ApprovalStatus.PENDING).first())
            if request is None:
                continue
            prior = None
            if request.expires_at <= now:
                prior = job_transition(
                    job_id=request.job_id, to=JobStatus.CANCELLED, allowed_from=[JobStatus.PENDING_APPROVAL],
                    event=Event.APPROVAL_EXPIRED,
                    details={"approval_id": request.public_id, "checkpoint": request.checkpoint,
                             "expires_at": request.expires_at.isoformat()},
                    updates={"reason": "expired", "error_class": ErrorClass.CANCELLED, "approval_checkpoint": ""},
                )
            request.status = ApprovalStatus.EXPIRED if prior is not None else ApprovalStatus.CANCELLED
            request.decided_at = now
            request.save(update_fields=["status", "decided_at"])
            if prior is not None:
                expired += 1
    if expired:
        dispatch_soon()
    return expired


def approvals_repair(*, limit: int = 500) -> int:
    """Open the missing request of every job waiting in ``pending_approval`` without one.

    A job and its request are written in one transaction, so this finds nothing on a healthy
    platform; it repairs rows left by older versions (which opened the request after commit)
    or by hand. Each repair is stamped ``approval_request_repaired``. Returns how many.
    """
    orphans = list(
        Job.objects.filter(status=JobStatus.PENDING_APPROVAL)
        .exclude(approval_requests__status=ApprovalStatus.PENDING)
        .order_by("pk")[:limit]
    )
    repaired = 0
    for job in orphans:
        checkpoint = job.approval_checkpoint or Checkpoint.BEFORE_EXECUTE
        approvers = int((job.policy_decision or {}).get("approvers") or 1)
        with transaction.atomic():
            if approval_request_open(job=job, checkpoint=checkpoint, approvers=approvers,
                                     event=Event.APPROVAL_REQUEST_REPAIRED) is not None:
                repaired += 1
    return repaired
