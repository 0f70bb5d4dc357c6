"""Batch submit: many submits in one call, each decided exactly as a single submit, written together."""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from common.errors import DomainError
from jobs.models import Job
from jobs.services.submit import PreparedSubmit, SubmitContext, SubmitResult, SubmitSpec, jobs_insert, submit_prepare

# A concurrent submit can take one of the batch's idempotency keys between the read and the
# insert; the batch is then prepared again (the key is found the second time).
ATTEMPTS = 3


def jobs_submit_batch(*, principal: User, specs: Sequence[SubmitSpec]) -> list[SubmitResult | DomainError]:
    """Submit ``specs`` for ``principal``; return one outcome per spec, in order.

    Steps: (1) read once what every item needs: the principal's grants and the policy rules
    (``SubmitContext``), and the jobs already holding any of the batch's idempotency keys (one
    query); (2) prepare each item with ``submit_prepare`` — the same validation, idempotency,
    permission, policy, redaction and secret handling as ``job_submit``; a refused item answers
    its ``DomainError`` and does not affect the others, and a key used twice in the batch acts
    as two submits in a row (same payload: the first one's job; another payload:
    ``idempotency_conflict``); (3) insert every new job in one transaction (``jobs_insert``: one
    INSERT of jobs, one of creation stamps, one of approval requests, one dispatch pass after
    commit) — all of them or none; (4) if the unique key constraint refused the insert (a
    concurrent submit used a key meanwhile), start again from (1).
    """
    for attempt in range(ATTEMPTS):
        try:
            return _submit_once(principal, specs)
        except IntegrityError:
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _submit_once(principal: User, specs: Sequence[SubmitSpec]) -> list[SubmitResult | DomainError]:
    context = SubmitContext(principal)
    keys = sorted({spec.idempotency_key for spec in specs if spec.idempotency_key})
    by_key: dict[str, Job] = (
        {str(job.idempotency_key): job for job in Job.objects.filter(principal=principal, idempotency_key__in=keys)}
        if keys else {}
    )
    outcomes: list[SubmitResult | DomainError] = []
    new: list[PreparedSubmit] = []
    for spec in specs:
        try:
            prepared = submit_prepare(spec=spec, context=context, existing=by_key.get)
        except DomainError as refusal:
            outcomes.append(refusal)
            continue
        if prepared.created:
            new.append(prepared)
            if spec.idempotency_key:
                by_key[spec.idempotency_key] = prepared.job
        outcomes.append(SubmitResult(prepared.job, created=prepared.created))
    if new:
        with transaction.atomic():
            jobs_insert(prepared=new)
    return outcomes
