"""Approval analytics against a fixture whose numbers are computed by hand below."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from approvals.analytics import APPROVAL_METRICS, approval_stats, approval_stats_collect, percentile
from approvals.charts import bar_chart, stacked_bar
from approvals.models import ApprovalDecision, ApprovalRequest
from jobs.models import Job

# Every timestamp is set explicitly relative to NOW; the selector takes ``now`` as an argument.
# NOW is close to the real time so that the REST view (whose window ends at the real now)
# sees the same fixture.
NOW = timezone.now().replace(microsecond=0)
H = 3600


def at(seconds_before_now: float) -> datetime:
    return NOW - timedelta(seconds=seconds_before_now)


@pytest.fixture
def fixture(make_principal: Any, settings: Any) -> dict[str, Any]:
    """Ten requests with explicit timestamps (seconds before NOW), SLA one hour.

    | # | risk     | scope | status    | created  | decided        | decisions                       |
    |---|----------|-------|-----------|----------|----------------|---------------------------------|
    | 1 | high     | crm   | approved  | 10 h     | +60 s          | r1 approve, modified            |
    | 2 | high     | crm   | approved  | 9 h      | +180 s         | r1 approve                      |
    | 3 | high     | store | denied    | 8 h      | +600 s         | r2 deny                         |
    | 4 | critical | crm   | approved  | 7 h      | +1200 s        | r1 approve +300 s;              |
    |   |          |       |           |          |                | r2 approve, modified, +1200 s   |
    | 5 | low      | store | expired   | 30 h     | at 6 h (clock) | none                            |
    | 6 | high     | crm   | pending   | 2 h      |                | none  (past SLA)                |
    | 7 | high     | crm   | pending   | 10 min   |                | none                            |
    | 8 | high     | crm   | cancelled | 5 h      | at 4 h         | none                            |
    | 9 | high     | crm   | approved  | 10 days  | +100 s         | r1 approve (outside the window) |
    |10 | medium   | store | pending   | 9 days   |                | none (outside; pending past SLA)|
    """
    settings.APPROVAL_SLA_S = H
    submitter = make_principal("agent").user
    r1 = make_principal("r1", grants=("approve:*",)).user
    r2 = make_principal("r2", grants=("approve:*",)).user
    rows = [
        # (risk, scope, status, created, decided, decisions: (reviewer, approve, modified, after_s))
        ("high", "crm", "approved", 10 * H, 60, [(r1, True, True, 60)]),
        ("high", "crm", "approved", 9 * H, 180, [(r1, True, False, 180)]),
        ("high", "store", "denied", 8 * H, 600, [(r2, False, False, 600)]),
        ("critical", "crm", "approved", 7 * H, 1200, [(r1, True, False, 300), (r2, True, True, 1200)]),
        ("low", "store", "expired", 30 * H, 24 * H, []),
        ("high", "crm", "pending", 2 * H, None, []),
        ("high", "crm", "pending", 600, None, []),
        ("high", "crm", "cancelled", 5 * H, H, []),
        ("high", "crm", "approved", 10 * 24 * H, 100, [(r1, True, False, 100)]),
        ("medium", "store", "pending", 9 * 24 * H, None, []),
    ]
    requests = []
    for risk, scope, status, created_ago, decided_after, decisions in rows:
        created = at(created_ago)
        job = Job.objects.create(principal=submitter, job_type=f"{scope}.thing", scope=scope, risk=risk,
                                 session_id="s", created_at=created)
        request = ApprovalRequest.objects.create(
            job=job, checkpoint="before_execute", risk=risk, approver_permission=f"approve:{scope}",
            status=status, created_at=created, expires_at=created + timedelta(days=1),
            decided_at=created + timedelta(seconds=decided_after) if decided_after is not None else None,
        )
        for reviewer, approve, modified, after_s in decisions:
            ApprovalDecision.objects.create(
                request=request, approver=reviewer, approve=approve,
                modified_inputs={"fields": ["amount"]} if modified else None,
                created_at=created + timedelta(seconds=after_s),
            )
        requests.append(request)
    return {"requests": requests}


def test_numbers_match_the_hand_computed_fixture(fixture: dict[str, Any]) -> None:
    # when the stats of the 7 days before NOW are computed
    stats = approval_stats(since=NOW - timedelta(days=7), now=NOW)
    # then requests created in the window (#1-#8) are counted by status
    assert stats.requests == 8
    assert stats.by_status == {"pending": 2, "approved": 3, "denied": 1, "expired": 1, "cancelled": 1}
    # rates over approved + denied + expired = 5: 3/5, 1/5, 1/5
    assert stats.rates == {"approve": pytest.approx(0.6), "deny": pytest.approx(0.2), "expire": pytest.approx(0.2)}
    # time to decision over the humanly decided #1-#4: [60, 180, 600, 1200]
    #   p50: rank 1.5 → 180 + 0.5·420 = 390; p90: rank 2.7 → 600 + 0.7·600 = 1020
    assert stats.time_to_decision.count == 4
    assert stats.time_to_decision.p50_s == pytest.approx(390)
    assert stats.time_to_decision.p90_s == pytest.approx(1020)
    # by risk: high [60, 180, 600] → p50 180, p90 rank 1.8 → 180 + 0.8·420 = 516; critical [1200]
    high = stats.time_to_decision_by_risk["high"]
    assert (high.count, high.p50_s, high.p90_s) == (3, pytest.approx(180), pytest.approx(516))
    critical = stats.time_to_decision_by_risk["critical"]
    assert (critical.count, critical.p50_s, critical.p90_s) == (1, 1200, 1200)
    assert set(stats.time_to_decision_by_risk) == {"high", "critical"}
    # by scope: crm [60, 180, 1200] → p50 180, p90 rank 1.8 → 180 + 0.8·1020 = 996; store [600]
    crm = stats.time_to_decision_by_scope["crm"]
    assert (crm.count, crm.p50_s, crm.p90_s) == (3, pytest.approx(180), pytest.approx(996))
    store = stats.time_to_decision_by_scope["store"]
    assert (store.count, store.p50_s, store.p90_s) == (1, 600, 600)
    # pending now: #6, #7, #10; past the one-hour SLA: #6 (2 h) and #10 (9 days)
    assert (stats.pending, stats.pending_past_sla) == (3, 2)
    assert stats.oldest_pending_age_s == pytest.approx(9 * 24 * H)
    requests = fixture["requests"]
    assert [o.approval_id for o in stats.overdue] == [requests[9].public_id, requests[5].public_id]
    # reviewers in the window: r1 decided #1, #2, #4 (3 approvals, 1 modified; waits 60, 180, 300 → p50 180);
    # r2 decided #3 (deny) and #4 (approve, modified; waits 600, 1200 → p50 900)
    loads = {r.reviewer: r for r in stats.reviewers}
    assert [r.reviewer for r in stats.reviewers] == ["r1", "r2"]
    r1, r2 = loads["r1"], loads["r2"]
    assert (r1.decisions, r1.approved, r1.denied, r1.modified_inputs) == (3, 3, 0, 1)
    assert loads["r1"].p50_s == pytest.approx(180)
    assert (r2.decisions, r2.approved, r2.denied, r2.modified_inputs) == (2, 1, 1, 1)
    assert loads["r2"].p50_s == pytest.approx(900)
    # modified-input rate: 2 modifying approvals of 4 approve decisions in the window
    assert (stats.approve_decisions, stats.modified_decisions) == (4, 2)
    assert stats.modified_input_rate == pytest.approx(0.5)


def test_an_empty_window_has_no_rates_or_percentiles(db: None) -> None:
    stats = approval_stats(since=NOW - timedelta(days=1), now=NOW)
    assert stats.requests == 0
    assert stats.rates == {"approve": None, "deny": None, "expire": None}
    assert (stats.time_to_decision.p50_s, stats.modified_input_rate, stats.oldest_pending_age_s) == (None, None, None)


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.9) == 7.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert percentile([10.0, 20.0, 30.0, 40.0, 50.0], 0.9) == pytest.approx(46.0)


def test_prometheus_samples_carry_the_same_numbers(fixture: dict[str, Any]) -> None:
    # when the samples for a 7-day window ending at NOW are collected
    samples = approval_stats_collect(window=timedelta(days=7), now=NOW)
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}
    # then every sample is declared, and the values are those above
    assert {s.name for s in samples} <= set(APPROVAL_METRICS)
    assert all(isinstance(s.value, float) for s in samples)
    assert values[("approval_requests_pending", ())] == 3
    assert values[("approval_requests_pending_past_sla", ())] == 2
    assert values[("approval_sla_seconds", ())] == H
    assert values[("approval_requests_in_window", (("status", "approved"),))] == 3
    assert values[("approval_outcome_ratio", (("outcome", "approve"),))] == pytest.approx(0.6)
    assert values[("approval_time_to_decision_seconds", (("quantile", "0.5"),))] == pytest.approx(390)
    assert values[("approval_time_to_decision_by_risk_seconds", (("quantile", "0.9"), ("risk", "high")))] == \
        pytest.approx(516)
    assert values[("approval_time_to_decision_by_scope_seconds", (("quantile", "0.9"), ("scope", "crm")))] == \
        pytest.approx(996)
    assert values[("approval_reviewer_decisions", (("decision", "deny"), ("reviewer", "r2")))] == 1
    assert values[("approval_modified_input_ratio", ())] == pytest.approx(0.5)


# --- REST ---------------------------------------------------------------------------------------


def client_for(principal: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {principal.token}")
    return client


def test_stats_endpoint_for_staff_and_approvers_only(fixture: dict[str, Any], make_principal: Any) -> None:
    # given an approver (not staff), a staff user without grants, and a plain agent
    approver = make_principal("reviewer", grants=("approve:crm",))
    staff = make_principal("ops", grants=(), staff=True)
    agent = make_principal("plain", grants=("demo:*",))
    since = (NOW - timedelta(days=7)).isoformat()
    # when each asks for the stats
    answers = {name: client_for(p).get("/api/v1/approvals/stats", {"since": since})
               for name, p in (("approver", approver), ("staff", staff), ("agent", agent))}
    # then staff and approvers get the numbers, the agent is refused
    assert answers["agent"].status_code == 403
    assert answers["agent"].json()["code"] == "permission_denied"
    for name in ("approver", "staff"):
        assert answers[name].status_code == 200, answers[name].content
    body = answers["staff"].json()
    assert body["by_status"]["approved"] == 3
    assert body["time_to_decision"]["p50_s"] == pytest.approx(390)
    assert body["time_to_decision_by_risk"]["high"]["p90_s"] == pytest.approx(516)
    assert body["rates"]["approve"] == pytest.approx(0.6)
    assert body["pending_past_sla"] == 2
    assert body["modified_input_rate"] == pytest.approx(0.5)
    assert [r["reviewer"] for r in body["reviewers"]] == ["r1", "r2"]
    assert APIClient().get("/api/v1/approvals/stats").status_code == 401
    assert client_for(staff).get("/api/v1/approvals/stats", {"since": "nope"}).status_code == 400


def test_stats_endpoint_defaults_to_seven_days(make_principal: Any) -> None:
    staff = make_principal("ops", grants=(), staff=True)
    body = client_for(staff).get("/api/v1/approvals/stats").json()
    since = datetime.fromisoformat(body["since"])
    assert abs((timezone.now() - timedelta(days=7) - since).total_seconds()) < 60


# --- admin page ---------------------------------------------------------------------------------


def test_admin_page_renders_svg_charts(fixture: dict[str, Any], make_principal: Any, client: Any) -> None:
    # given a staff reviewer logged in to the admin
    reviewer = make_principal("lead", grants=("approve:*",), staff=True).user
    client.force_login(reviewer)
    # when the analytics page is opened with a window wide enough for the fixture
    response = client.get("/admin/approvals/approvalrequest/stats/?days=7")
    # then it renders the cards, inline SVG charts (no script, no external resource) and tables
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg" class="chart"') == 4
    page = html[html.index('<div id="approval-stats">'):]
    assert "<script" not in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert 'id="stats-reviewers"' in html and ">r1<" in html
    assert "6.5 min" in html  # p50 time to decision: 390 s
    # and the list of requests links to it
    listing = client.get("/admin/approvals/approvalrequest/?status__exact=pending")
    assert 'id="approval-analytics-link"' in listing.content.decode()


def test_admin_page_refuses_non_staff(make_principal: Any, client: Any) -> None:
    user = make_principal("plain", grants=("approve:*",)).user
    client.force_login(user)
    response = client.get("/admin/approvals/approvalrequest/stats/")
    assert response.status_code == 302  # to the admin login


def test_charts_escape_labels_and_handle_empty_data() -> None:
    chart = bar_chart(title="t", rows=[("<b>x</b>", [1.0, None])], series=["a", "b"])
    assert "<b>" not in chart and "&lt;b&gt;" in chart
    assert "no data" in bar_chart(title="t", rows=[], series=["a"])
    assert "no data" in stacked_bar(title="t", parts=[("a", 0)])
    assert 'width="560.0"' in stacked_bar(title="t", parts=[("a", 2), ("b", 0)])
