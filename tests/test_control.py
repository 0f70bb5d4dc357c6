"""Cancel, bulk cancel, fair-share admission, priority, delay and pause — on the database alone.

Admission is checked by calling ``dispatch_ready`` inside the test transaction: the publish
step runs on commit, which never happens here, so nothing reaches the broker and the
assertions read which rows the dispatcher marked (``dispatched_at``) and in what order.
"""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from approvals.models import ApprovalRequest, ApprovalStatus
from audit.models import AuditStamp
from jobs.admission.dispatcher import admission_candidates, dispatch_ready
from jobs.models import Job, JobRun, JobStatus, JobTypeControl, PrincipalControl, SessionControl
from jobs.services.control import (
    cancels_enforce,
    job_cancel,
    job_type_pause,
    jobs_cancel,
    session_pause,
    session_resume,
)
from jobs.services.submit import SubmitSpec, job_submit
from jobs.transitions import jobs_transition_bulk
from tests.factories import JobFactory, claim

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def unclaimed_buffer_out_of_the_way(settings: Any) -> None:
    """These tests pin the other admission limits (global in-flight cap, session caps, pauses,
    rate limits); the unclaimed-buffer limit has tests of its own (test_dispatch_coalesce.py)."""
    settings.JOBS_MAX_UNCLAIMED = 10_000


def _submit(principal: Any, session: str, job_type: str = "demo.noop", **kw: Any) -> Job:
    inputs = kw.pop("inputs", {})
    return job_submit(principal=principal.user, spec=SubmitSpec(job_type=job_type, inputs=inputs,
                                                                session_id=session, **kw)).job


def _admitted(ids: list[str] | None = None) -> list[str]:
    qs = Job.objects.filter(dispatched_at__isnull=False)
    if ids is not None:
        qs = qs.filter(pk__in=ids)
    return list(qs.values_list("id", flat=True))


def _flood(principal: Any, session: str, n: int) -> list[str]:
    """``n`` queued jobs for one session, inserted in one go (the dispatcher only reads rows)."""
    return [j.id for j in JobFactory.create_bulk(n, principal=principal.user, session_id=session)]


# --- cancel one ---------------------------------------------------------------------------------


def test_cancel_queued_job_is_cancelled_at_once_and_stamped(api: Any, principal: Any) -> None:
    # given a queued job
    job = _submit(principal, "s1", run_after=timezone.now() + timedelta(hours=1))
    # when it is cancelled
    response = api.post(f"/api/v1/jobs/{job.pk}/cancel")
    # then it is cancelled at once, with a stamp that knows the prior status
    assert response.status_code == 202, response.content
    assert response.json() == {"job_id": job.pk, "status": "cancelled", "cancelling": False}
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.finished_at is not None
    stamp = AuditStamp.objects.filter(job_id=job.pk).order_by("-seq").first()
    assert stamp is not None
    assert (stamp.event, stamp.from_status, stamp.to_status) == ("cancelled", "queued", "cancelled")
    assert stamp.details["mode"] == "before_start"


def test_cancel_pending_approval_cancels_its_approval_request(api: Any, principal: Any) -> None:
    # given a job waiting for a human before execute
    job = _submit(principal, "s1", constraints={"requires_human_ack": True})
    assert job.status == JobStatus.PENDING_APPROVAL
    assert ApprovalRequest.objects.filter(job=job, status=ApprovalStatus.PENDING).count() == 1
    # when it is cancelled
    response = api.post(f"/api/v1/jobs/{job.pk}/cancel")
    # then the job and its approval request are both cancelled
    assert response.status_code == 202
    assert Job.objects.get(pk=job.pk).status == JobStatus.CANCELLED
    assert ApprovalRequest.objects.get(job=job).status == ApprovalStatus.CANCELLED


def test_cancel_retry_scheduled_job(clock: Any, api: Any, principal: Any) -> None:
    # given a job waiting for its backoff
    job = JobFactory.create(principal=principal.user, session_id="s1", status=JobStatus.RETRY_SCHEDULED,
                            run_after=timezone.now() + timedelta(minutes=5))
    # when it is cancelled
    response = api.post(f"/api/v1/jobs/{job.pk}/cancel")
    # then it never comes back, not even once its backoff has passed
    assert response.json()["status"] == "cancelled"
    clock.shift(timedelta(minutes=5, seconds=1))
    dispatch_ready(promote=True)
    assert Job.objects.get(pk=job.pk).status == JobStatus.CANCELLED


def test_cancel_running_job_asks_it_to_stop(api: Any, principal: Any) -> None:
    # given a running job
    job = _submit(principal, "s1")
    claim(job)
    # when it is cancelled (twice)
    first = api.post(f"/api/v1/jobs/{job.pk}/cancel")
    second = api.post(f"/api/v1/jobs/{job.pk}/cancel")
    # then it stays running with a cancel request, stamped once
    assert first.status_code == second.status_code == 202
    assert first.json() == {"job_id": job.pk, "status": "running", "cancelling": True}
    assert second.json()["cancelling"] is True
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.cancel_requested_at is not None
    assert AuditStamp.objects.filter(job_id=job.pk, event="cancel_requested").count() == 1


def test_cancel_finished_job_is_409_not_cancellable(api: Any, principal: Any) -> None:
    # given a succeeded job
    job = JobFactory.create(principal=principal.user, session_id="s1", status=JobStatus.SUCCEEDED)
    # when it is cancelled
    response = api.post(f"/api/v1/jobs/{job.pk}/cancel")
    # then the answer is a stable conflict
    assert response.status_code == 409
    assert response.json()["code"] == "not_cancellable"


def test_cancel_other_principals_job_is_404(api: Any, make_principal: Any) -> None:
    # given another principal's job
    other = make_principal("someone-else")
    job = _submit(other, "s1")
    # when this principal cancels it
    response = api.post(f"/api/v1/jobs/{job.pk}/cancel")
    # then it does not exist for them and is untouched
    assert response.status_code == 404
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED


# --- forced cancel ------------------------------------------------------------------------------


@override_settings(JOBS_CANCEL_GRACE_S=5)
def test_enforce_cancels_forces_only_after_the_grace(clock: Any, principal: Any) -> None:
    # given a running job asked to cancel 3 s ago and another 10 s ago
    young, old = _submit(principal, "s1"), _submit(principal, "s1")
    for job in (young, old):
        claim(job)
    job_cancel(job=old, actor="test")
    clock.shift(7)
    job_cancel(job=young, actor="test")
    clock.shift(3)
    # when the enforcer runs
    forced = cancels_enforce(now=timezone.now())
    # then only the old one is cancelled, stamped forced, its run closed
    assert forced == 1
    assert Job.objects.get(pk=young.pk).status == JobStatus.RUNNING
    assert Job.objects.get(pk=old.pk).status == JobStatus.CANCELLED
    stamp = AuditStamp.objects.filter(job_id=old.pk).order_by("-seq").first()
    assert stamp is not None and stamp.details["mode"] == "forced"
    assert JobRun.objects.get(job=old).outcome == "cancelled"


# --- bulk cancel ---------------------------------------------------------------------------------


def test_bulk_cancel_by_session_with_filters(api: Any, principal: Any, make_principal: Any) -> None:
    # given a session with queued, pending, running and finished jobs, another session, and
    # another principal's jobs under the same session id
    later = timezone.now() + timedelta(hours=1)
    queued = [_submit(principal, "bulk", run_after=later) for _ in range(3)]
    pending = _submit(principal, "bulk", constraints={"requires_human_ack": True})
    running = _submit(principal, "bulk", run_after=later)
    claim(running)
    done = JobFactory.create(principal=principal.user, session_id="bulk", status=JobStatus.SUCCEEDED)
    elsewhere = _submit(principal, "other", run_after=later)
    foreign = _submit(make_principal("foreign"), "bulk", run_after=later)
    # when the session is cancelled with a status filter first, then fully
    only_pending = api.post("/api/v1/jobs/cancel", {"session_id": "bulk", "status": "pending_approval"},
                            format="json")
    rest = api.post("/api/v1/jobs/cancel", {"session_id": "bulk"}, format="json")
    # then each call reports its counts, and only this principal's session changed
    assert only_pending.status_code == 200
    assert only_pending.json()["cancelled"] == 1 and only_pending.json()["cancelling"] == 0
    assert rest.json()["cancelled"] == 3 and rest.json()["cancelling"] == 1
    assert set(Job.objects.filter(pk__in=[j.pk for j in queued]).values_list("status", flat=True)) == {"cancelled"}
    assert Job.objects.get(pk=pending.pk).status == "cancelled"
    assert Job.objects.get(pk=running.pk).cancel_requested_at is not None
    assert Job.objects.get(pk=done.pk).status == "succeeded"
    assert Job.objects.get(pk=elsewhere.pk).status == "queued"
    assert Job.objects.get(pk=foreign.pk).status == "queued"


def test_bulk_cancel_requires_session_id(api: Any) -> None:
    response = api.post("/api/v1/jobs/cancel", {}, format="json")
    assert response.status_code == 400


def test_bulk_transition_stamps_each_job_with_its_prior_status(principal: Any) -> None:
    # given jobs in two cancellable statuses
    a = _submit(principal, "s")
    b = JobFactory.create(principal=principal.user, session_id="s", status=JobStatus.RETRY_SCHEDULED)
    # when both move in one bulk call
    moved = jobs_transition_bulk(jobs=[a.pk, b.pk], to=JobStatus.CANCELLED,
                                 allowed_from=[JobStatus.QUEUED, JobStatus.RETRY_SCHEDULED],
                                 event="cancelled", actor="test")
    # then the result and the stamps know where each came from, and the chains are intact
    assert moved == {"queued": [a.pk], "retry_scheduled": [b.pk]}
    for job, prior in ((a, "queued"), (b, "retry_scheduled")):
        last, before = AuditStamp.objects.filter(job_id=job.pk).order_by("-seq")[:2]
        assert (last.seq, last.from_status, last.prev_hash) == (before.seq + 1, prior, before.hash)
    call_command("verify_audit", stdout=StringIO())


def test_cancel_jobs_command_dry_run_then_real(principal: Any) -> None:
    # given three queued jobs of a session
    later = timezone.now() + timedelta(hours=1)
    ids = [_submit(principal, "cmd", run_after=later).pk for _ in range(3)]
    out = StringIO()
    # when the command runs dry, then for real
    call_command("cancel_jobs", "--session", "cmd", "--dry-run", stdout=out)
    assert Job.objects.filter(pk__in=ids, status="queued").count() == 3
    call_command("cancel_jobs", "--session", "cmd", stdout=out)
    # then the dry run only counted and the real run cancelled all three
    assert "would cancel 3 job(s)" in out.getvalue()
    assert "cancelled 3 job(s)" in out.getvalue()
    assert Job.objects.filter(pk__in=ids, status="cancelled").count() == 3


def test_bulk_cancel_of_many_jobs_is_one_set_based_call(principal: Any, django_assert_max_num_queries: Any) -> None:
    # given 3,000 queued jobs in one session
    ids = _flood(principal, "big", 3000)
    # when they are cancelled in one call
    # a few dozen statements (chunks of ids and of stamp rows), not thousands
    with django_assert_max_num_queries(100):
        result = jobs_cancel(jobs=Job.objects.filter(session_id="big"), actor="test")
    # then all are cancelled, with one stamp each
    assert result.cancelled_count == 3000
    assert AuditStamp.objects.filter(event="cancelled", job_id__in=ids).count() == 3000


# --- fair share, priority, delay, pause -----------------------------------------------------------


@override_settings(JOBS_MAX_IN_FLIGHT=4, JOBS_SESSION_MAX_CONCURRENCY=3)
def test_flooding_session_does_not_starve_another(principal: Any, make_principal: Any) -> None:
    # given session A flooding 1,000 jobs before session B submits 2
    flood = _flood(principal, "A", 1000)
    b_jobs = [_submit(make_principal("b"), "B").pk for _ in range(2)]
    # when the dispatcher admits four (the global cap)
    admitted = dispatch_ready()
    # then they alternate between the sessions: two of A, two of B
    assert admitted == 4
    assert len(_admitted(b_jobs)) == 2
    assert len(_admitted(flood)) == 2


@override_settings(JOBS_MAX_IN_FLIGHT=200, JOBS_SESSION_MAX_CONCURRENCY=3)
def test_session_cap_principal_default_and_session_override(principal: Any) -> None:
    # given 20 ready jobs in each of three sessions of one principal
    for s in ("c1", "c2", "c3"):
        _flood(principal, s, 20)
    PrincipalControl.objects.create(principal=principal.user, session_max_concurrency=5)
    SessionControl.objects.create(principal=principal.user, session_id="c3", max_concurrency=1)
    # when the dispatcher runs twice
    dispatch_ready()
    dispatch_ready()
    # then each session holds exactly its cap in flight
    counts = {s: Job.objects.filter(session_id=s, dispatched_at__isnull=False).count() for s in ("c1", "c2", "c3")}
    assert counts == {"c1": 5, "c2": 5, "c3": 1}


@override_settings(JOBS_SESSION_MAX_CONCURRENCY=2)
def test_priority_orders_admission_and_run_after_delays_it(principal: Any) -> None:
    # given low, high and delayed high-priority jobs in one session
    past = timezone.now() - timedelta(seconds=1)
    low = _submit(principal, "p", priority=-5, run_after=past)
    high = _submit(principal, "p", priority=50, run_after=past)
    delayed = _submit(principal, "p", priority=100, run_after=timezone.now() + timedelta(hours=1))
    mid = _submit(principal, "p", priority=10, run_after=past)
    # when candidates are chosen
    order = admission_candidates(now=timezone.now(), limit=10)
    # then the delayed one waits and the others come by priority, up to the session's cap
    assert order == [high.pk, mid.pk]
    assert delayed.pk not in order and low.pk not in order


def test_paused_session_keeps_jobs_queued_until_resumed(principal: Any) -> None:
    # given a paused session with ready jobs
    ids = _flood(principal, "pz", 3)
    session_pause(principal_id=principal.user.pk, session_id="pz")
    # when the dispatcher runs
    assert dispatch_ready() == 0
    # then nothing was admitted; after resume they are
    assert _admitted(ids) == []
    session_resume(principal_id=principal.user.pk, session_id="pz")
    dispatch_ready()
    assert len(_admitted(ids)) == 3


def test_pause_until_expires_by_itself(clock: Any, principal: Any) -> None:
    ids = _flood(principal, "pu", 2)
    session_pause(principal_id=principal.user.pk, session_id="pu", until=timezone.now() + timedelta(hours=1))
    assert dispatch_ready() == 0
    clock.shift(timedelta(hours=1, seconds=1))
    assert dispatch_ready() == 2
    assert len(_admitted(ids)) == 2


def test_paused_job_type_and_rate_limit(principal: Any) -> None:
    # given two sessions of no-ops and long-running jobs
    past = timezone.now() - timedelta(seconds=1)
    noops = _flood(principal, "t1", 3)
    longs = [_submit(principal, "t2", "demo.long_running", inputs={"steps": 1}, run_after=past).pk
             for _ in range(3)]
    # when long_running is paused and no-ops are limited to 2 per minute
    job_type_pause(job_type="demo.long_running")
    JobTypeControl.objects.create(job_type="demo.noop", rate_limit=2, rate_period_s=60)
    dispatch_ready()
    dispatch_ready()
    # then no long-running job and only two no-ops were admitted
    assert _admitted(longs) == []
    assert len(_admitted(noops)) == 2


@override_settings(JOBS_REDISPATCH_AFTER_S=60, JOBS_SESSION_MAX_CONCURRENCY=3)
def test_stale_published_jobs_are_redispatched_not_counted(clock: Any, principal: Any) -> None:
    # given a session whose three jobs were published five minutes ago and never claimed
    ids = _flood(principal, "stale", 3)
    assert dispatch_ready() == 3
    old_tokens = set(Job.objects.filter(pk__in=ids).values_list("dispatch_token", flat=True))
    clock.shift(timedelta(minutes=5))
    # when the dispatcher runs
    # then all three are published again with a fresh token (lost messages do not fill the cap)
    assert dispatch_ready() == 3
    assert not Job.objects.filter(pk__in=ids, dispatch_token__in=old_tokens).exists()


def test_session_api_counts_pause_and_resume(api: Any, principal: Any) -> None:
    # given a session with two queued jobs and one pending approval
    later = timezone.now() + timedelta(hours=1)
    _submit(principal, "sa", run_after=later)
    _submit(principal, "sa", run_after=later)
    _submit(principal, "sa", constraints={"requires_human_ack": True})
    # when it is paused, read, and resumed
    paused = api.post("/api/v1/sessions/sa/pause", {}, format="json")
    body = api.get("/api/v1/sessions/sa").json()
    resumed = api.post("/api/v1/sessions/sa/resume")
    # then the counts and the pause state are reported
    assert paused.status_code == 200 and paused.json()["paused"] is True
    assert body["counts"]["queued"] == 2 and body["counts"]["pending_approval"] == 1
    assert body["pending_approvals"] == 1 and body["total"] == 3
    assert resumed.json()["paused"] is False
