"""Approval analytics: how fast and how well humans review. Reads only.

One selector (``approval_stats``) computes every number; the admin page, ``GET
/api/v1/approvals/stats`` and the Prometheus samples (``approval_stats_collect``) all show its
result, so they cannot disagree. Definitions are in docs/approvals.md ("Analytics").
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from approvals.models import ApprovalDecision, ApprovalRequest, ApprovalStatus

# The window when the caller names none (API, admin page, metrics).
DEFAULT_WINDOW = timedelta(days=7)
# Outcomes a rate is taken over: the requests that ended by a human or by the clock. A
# ``cancelled`` request (its job left pending_approval another way) is counted but not rated.
RATED = (ApprovalStatus.APPROVED, ApprovalStatus.DENIED, ApprovalStatus.EXPIRED)
# Pending requests past the SLA listed by the admin page (oldest first).
OVERDUE_LISTED = 20


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (PostgreSQL ``percentile_cont``, numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Durations:
    count: int
    p50_s: float | None
    p90_s: float | None

    @classmethod
    def of(cls, values: list[float]) -> Durations:
        return cls(len(values), percentile(values, 0.5), percentile(values, 0.9))


@dataclass
class ReviewerLoad:
    reviewer: str
    decisions: int = 0
    approved: int = 0
    denied: int = 0
    modified_inputs: int = 0
    # Time from the request to this reviewer's decision.
    p50_s: float | None = None


@dataclass
class OverdueRequest:
    approval_id: str  # the public id the API uses (``apr_…``)
    pk: int  # the admin's key
    job_id: str
    job_type: str
    risk: str
    scope: str
    age_s: float


@dataclass
class ApprovalStats:
    since: datetime
    until: datetime
    sla_s: int
    requests: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    rates: dict[str, float | None] = field(default_factory=dict)
    time_to_decision: Durations = field(default_factory=lambda: Durations(0, None, None))
    time_to_decision_by_risk: dict[str, Durations] = field(default_factory=dict)
    time_to_decision_by_scope: dict[str, Durations] = field(default_factory=dict)
    pending: int = 0
    pending_past_sla: int = 0
    oldest_pending_age_s: float | None = None
    overdue: list[OverdueRequest] = field(default_factory=list)
    reviewers: list[ReviewerLoad] = field(default_factory=list)
    approve_decisions: int = 0
    modified_decisions: int = 0
    modified_input_rate: float | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["since"] = self.since.isoformat()
        data["until"] = self.until.isoformat()
        return data


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def approval_stats(*, since: datetime | None = None, now: datetime | None = None,
                   sla_s: int | None = None) -> ApprovalStats:
    """Every approval number for requests created in ``[since, now)``, and pending ones now.

    Steps: (1) requests created in the window, counted by status; approve / deny / expire rates
    over those approved, denied or expired; (2) time to decision (``decided_at - created_at``)
    of the requests a human decided (approved or denied), p50/p90 overall, by risk and by the
    job's scope; (3) requests pending *now* (whenever created), and those older than the SLA
    (``APPROVAL_SLA_S``); (4) per reviewer, the decisions made in the window (approve, deny,
    with modified inputs) and the p50 time from request to their decision; (5) the
    modified-input rate: approve decisions in the window that changed inputs, over all approve
    decisions in the window.
    """
    now = now or timezone.now()
    since = since or now - DEFAULT_WINDOW
    sla = int(settings.APPROVAL_SLA_S if sla_s is None else sla_s)
    stats = ApprovalStats(since=since, until=now, sla_s=sla)

    window = ApprovalRequest.objects.filter(created_at__gte=since, created_at__lt=now)
    durations: list[float] = []
    by_risk: dict[str, list[float]] = defaultdict(list)
    by_scope: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, int] = dict.fromkeys(ApprovalStatus.values, 0)
    for status, risk, scope, created, decided in window.values_list(
        "status", "risk", "job__scope", "created_at", "decided_at"
    ).iterator(chunk_size=2000):
        counts[status] = counts.get(status, 0) + 1
        if status in (ApprovalStatus.APPROVED, ApprovalStatus.DENIED) and decided is not None:
            seconds = (decided - created).total_seconds()
            durations.append(seconds)
            by_risk[risk].append(seconds)
            by_scope[scope].append(seconds)
    stats.requests = sum(counts.values())
    stats.by_status = counts
    rated = sum(counts[s] for s in RATED)
    stats.rates = {
        "approve": _ratio(counts[ApprovalStatus.APPROVED], rated),
        "deny": _ratio(counts[ApprovalStatus.DENIED], rated),
        "expire": _ratio(counts[ApprovalStatus.EXPIRED], rated),
    }
    stats.time_to_decision = Durations.of(durations)
    stats.time_to_decision_by_risk = {k: Durations.of(v) for k, v in sorted(by_risk.items())}
    stats.time_to_decision_by_scope = {k: Durations.of(v) for k, v in sorted(by_scope.items())}

    pending = ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING)
    stats.pending = pending.count()
    overdue = pending.filter(created_at__lte=now - timedelta(seconds=sla))
    stats.pending_past_sla = overdue.count()
    oldest = pending.order_by("created_at").values_list("created_at", flat=True).first()
    stats.oldest_pending_age_s = (now - oldest).total_seconds() if oldest is not None else None
    stats.overdue = [
        OverdueRequest(approval_id=public_id, pk=pk, job_id=job_id, job_type=job_type, risk=risk, scope=scope,
                       age_s=(now - created).total_seconds())
        for pk, public_id, job_id, job_type, risk, scope, created in overdue.order_by("created_at", "pk").values_list(
            "pk", "public_id", "job_id", "job__job_type", "risk", "job__scope", "created_at")[:OVERDUE_LISTED]
    ]

    loads: dict[str, ReviewerLoad] = {}
    waits: dict[str, list[float]] = defaultdict(list)
    for username, approve, modified, decided, requested in (
        ApprovalDecision.objects.filter(created_at__gte=since, created_at__lt=now)
        .values_list("approver__username", "approve", "modified_inputs", "created_at", "request__created_at")
        .iterator(chunk_size=2000)
    ):
        load = loads.setdefault(username, ReviewerLoad(reviewer=username))
        load.decisions += 1
        if approve:
            load.approved += 1
            stats.approve_decisions += 1
            if modified is not None:
                load.modified_inputs += 1
                stats.modified_decisions += 1
        else:
            load.denied += 1
        waits[username].append((decided - requested).total_seconds())
    for username, load in loads.items():
        load.p50_s = percentile(waits[username], 0.5)
    stats.reviewers = sorted(loads.values(), key=lambda r: (-r.decisions, r.reviewer))
    stats.modified_input_rate = _ratio(stats.modified_decisions, stats.approve_decisions)
    return stats


# --- Prometheus ------------------------------------------------------------------------------

# name → (type, help). Every sample ``approval_stats_collect`` returns has one of these names.
APPROVAL_METRICS: dict[str, tuple[str, str]] = {
    "approval_requests_pending": ("gauge", "Approval requests waiting for a decision now."),
    "approval_requests_pending_past_sla": (
        "gauge", "Approval requests waiting longer than APPROVAL_SLA_S now."),
    "approval_oldest_pending_age_seconds": ("gauge", "Age of the oldest pending approval request."),
    "approval_sla_seconds": ("gauge", "The approval SLA (APPROVAL_SLA_S)."),
    "approval_stats_window_seconds": ("gauge", "Length of the window the windowed approval gauges cover."),
    "approval_requests_in_window": ("gauge", "Approval requests created in the window, by current status."),
    "approval_outcome_ratio": (
        "gauge", "Share of the window's approved, denied or expired requests with this outcome."),
    "approval_time_to_decision_seconds": (
        "gauge", "Time from request to a human decision in the window, by quantile (all requests)."),
    "approval_time_to_decision_by_risk_seconds": (
        "gauge", "Time from request to a human decision in the window, by risk and quantile."),
    "approval_time_to_decision_by_scope_seconds": (
        "gauge", "Time from request to a human decision in the window, by job scope and quantile."),
    "approval_reviewer_decisions": ("gauge", "Decisions made in the window, by reviewer and decision."),
    "approval_modified_input_ratio": (
        "gauge", "Share of the window's approve decisions that changed the job's inputs."),
}


@dataclass(frozen=True)
class MetricSample:
    name: str
    labels: dict[str, str]
    value: float


def _quantile_samples(name: str, labels: dict[str, str], d: Durations) -> list[MetricSample]:
    out = []
    for q, value in ((0.5, d.p50_s), (0.9, d.p90_s)):
        if value is not None:
            out.append(MetricSample(name, {**labels, "quantile": str(q)}, float(value)))
    return out


def approval_stats_collect(*, window: timedelta = DEFAULT_WINDOW, now: datetime | None = None) -> list[MetricSample]:
    """The approval numbers as plain Prometheus samples, for a ``/metrics`` collector.

    Returns ``MetricSample(name, labels, value)`` objects; ``APPROVAL_METRICS`` gives each
    name's type and help text. A value that does not exist (a percentile with no decisions, a
    rate over nothing) is left out rather than reported as 0. One call is one
    ``approval_stats`` (a few queries over the window): call it per scrape, not per sample.
    """
    now = now or timezone.now()
    stats = approval_stats(since=now - window, now=now)
    samples = [
        MetricSample("approval_requests_pending", {}, float(stats.pending)),
        MetricSample("approval_requests_pending_past_sla", {}, float(stats.pending_past_sla)),
        MetricSample("approval_sla_seconds", {}, float(stats.sla_s)),
        MetricSample("approval_stats_window_seconds", {}, window.total_seconds()),
    ]
    if stats.oldest_pending_age_s is not None:
        samples.append(MetricSample("approval_oldest_pending_age_seconds", {}, stats.oldest_pending_age_s))
    samples += [MetricSample("approval_requests_in_window", {"status": s}, float(n))
                for s, n in sorted(stats.by_status.items())]
    samples += [MetricSample("approval_outcome_ratio", {"outcome": o}, float(r))
                for o, r in sorted(stats.rates.items()) if r is not None]
    samples += _quantile_samples("approval_time_to_decision_seconds", {}, stats.time_to_decision)
    for risk, d in stats.time_to_decision_by_risk.items():
        samples += _quantile_samples("approval_time_to_decision_by_risk_seconds", {"risk": risk}, d)
    for scope, d in stats.time_to_decision_by_scope.items():
        samples += _quantile_samples("approval_time_to_decision_by_scope_seconds", {"scope": scope}, d)
    for load in stats.reviewers:
        samples.append(MetricSample("approval_reviewer_decisions", {"reviewer": load.reviewer, "decision": "approve"},
                                    float(load.approved)))
        samples.append(MetricSample("approval_reviewer_decisions", {"reviewer": load.reviewer, "decision": "deny"},
                                    float(load.denied)))
    if stats.modified_input_rate is not None:
        samples.append(MetricSample("approval_modified_input_ratio", {}, stats.modified_input_rate))
    return samples
