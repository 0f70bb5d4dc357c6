"""Policy evaluation, rule validation, grants and secrets: no broker, no workers."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError

from governance.admin import PolicyRuleForm
from governance.models import Grant, PolicyRule
from governance.policy import RISK_DEFAULTS, conditions_errors, policy_evaluate, redact_inputs
from governance.secrets import decrypt_secrets, encrypt_secrets, secrets_scrub
from governance.selectors import missing_permissions, principal_grants
from tests.factories import PolicyRuleFactory


def evaluate(user: Any, **overrides: Any) -> Any:
    args: dict[str, Any] = {
        "principal": user, "job_type": "crm.update_contact", "scope": "crm", "risk": "low", "ack": "none",
        "has_commit": True, "inputs": {"amount": 10, "contact": {"email": "a@example.com"}},
    }
    args.update(overrides)
    return policy_evaluate(**args)


def rule(**fields: Any) -> PolicyRule:
    return PolicyRuleFactory.create(**fields)


@pytest.fixture
def user(make_principal: Any) -> Any:
    return make_principal("alice", grants=("crm:write",)).user


def test_no_rule_falls_back_to_risk_defaults(user: Any) -> None:
    # given no rules
    for risk, (action, approvers) in RISK_DEFAULTS.items():
        # when a job of each risk is evaluated
        decision = evaluate(user, risk=risk)
        # then the documented default decides
        assert decision.action == action
        assert decision.approvers == approvers
        assert decision.rule_id is None
        assert decision.path == [f"default:risk={risk}:{action}"]


def test_first_enabled_match_by_order_wins(user: Any) -> None:
    # given an allow rule at order 20, a block rule at order 10 and a disabled rule at order 1
    allow = rule(order=20, job_type="crm.*", decision="allow")
    block = rule(order=10, job_type="crm.update_*", decision="block", reason="crm frozen")
    rule(order=1, job_type="*", decision="allow", enabled=False)
    # when evaluated
    decision = evaluate(user)
    # then the lowest-order enabled match decides, and the decision names the rule and version
    assert decision.action == "block"
    assert decision.rule_id == block.pk
    assert decision.reason == "crm frozen"
    assert decision.path == [f"rule:{block.pk}:{block.name}:block"]
    assert len(decision.policy_version) == 16
    assert allow.pk != block.pk


@pytest.mark.parametrize(
    ("fields", "matches"),
    [
        ({"job_type": "crm.*"}, True),
        ({"job_type": "cms.*"}, False),
        ({"scope": "crm"}, True),
        ({"scope": "cms"}, False),
        ({"risk": "low"}, True),
        ({"risk": "high"}, False),
        ({"conditions": [{"path": "amount", "op": "gt", "value": 5}]}, True),
        ({"conditions": [{"path": "amount", "op": "gt", "value": 50}]}, False),
        ({"conditions": [{"path": "contact.email", "op": "glob", "value": "*@example.com"}]}, True),
        ({"conditions": [{"path": "contact.email", "op": "regex", "value": "@corp\\."}]}, False),
        ({"conditions": [{"path": "missing", "op": "exists", "value": False}]}, True),
        ({"conditions": [{"path": "amount", "op": "in", "value": [10, 20]}]}, True),
        ({"conditions": [{"path": "amount", "op": "gt", "value": 5},
                         {"path": "amount", "op": "lt", "value": 8}]}, False),
    ],
)
def test_rule_matching_on_each_field(user: Any, fields: dict[str, Any], matches: bool) -> None:
    # given one block rule matching on one field
    rule(decision="block", **fields)
    # when evaluated
    decision = evaluate(user)
    # then it blocks exactly when it matches
    assert (decision.action == "block") is matches


def test_rule_matches_principal_or_group(user: Any, make_principal: Any) -> None:
    # given rules for another principal and for a group alice belongs to
    other = make_principal("bob").user
    rule(order=1, principal=other, decision="block")
    reviewers = Group.objects.create(name="reviewers")
    user.groups.add(reviewers)
    by_group = rule(order=2, group=reviewers, decision="require_approval", approvers=2, checkpoint="before_commit")
    # when alice's job is evaluated
    decision = evaluate(user)
    # then the principal rule is skipped and the group rule applies
    assert decision.action == "require_approval"
    assert decision.rule_id == by_group.pk
    assert decision.approvers == 2
    assert decision.checkpoint == "before_commit"


def test_redact_accumulates_and_evaluation_continues(user: Any) -> None:
    # given two redact rules followed by an approval rule
    r1 = rule(order=1, decision="redact", redact_fields=["contact.email"])
    r2 = rule(order=2, decision="redact", redact_fields=["amount"])
    r3 = rule(order=3, decision="require_approval")
    # when evaluated
    decision = evaluate(user)
    # then both redactions are kept and the first non-redact rule decides
    assert decision.redact_fields == ["contact.email", "amount"]
    assert decision.action == "require_approval"
    assert decision.rule_id == r3.pk
    assert [p.split(":")[1] for p in decision.path] == [str(r1.pk), str(r2.pk), str(r3.pk)]


def test_redact_alone_is_reported_as_redact(user: Any) -> None:
    # given only a redact rule on a low-risk type
    rule(decision="redact", redact_fields=["contact.email"])
    # when evaluated
    decision = evaluate(user)
    # then the action says redact (the job is allowed with the fields replaced)
    assert decision.action == "redact"
    redacted, hit = redact_inputs({"contact": {"email": "x"}, "amount": 1}, decision.redact_fields)
    assert redacted == {"contact": {"email": "[REDACTED]"}, "amount": 1}
    assert hit == ["contact.email"]


def test_policy_version_changes_when_a_rule_changes(user: Any) -> None:
    # given a rule and the version it yields
    r = rule(decision="allow")
    before = evaluate(user).policy_version
    # when the rule is turned into a block
    r.decision = "block"
    r.save()
    # then the version differs
    assert evaluate(user).policy_version != before


def test_job_type_ack_forces_approval(user: Any) -> None:
    # when a type with its own acknowledgment point is evaluated under an allow rule
    rule(decision="allow")
    decision = evaluate(user, ack="before_commit")
    # then approval is required at that point
    assert decision.action == "require_approval"
    assert decision.checkpoint == "before_commit"


@pytest.mark.parametrize(
    "conditions",
    [
        {"path": "amount"},
        [{"path": "amount", "op": "bigger", "value": 1}],
        [{"path": 3, "op": "eq", "value": 1}],
        [{"path": "", "op": "eq", "value": 1}],
        [{"path": "a", "op": "in", "value": 1}],
        [{"path": "a", "op": "eq"}],
        [{"path": "a", "op": "regex", "value": "("}],
        [{"path": "a", "op": "eq", "value": 1, "extra": True}],
        ["amount > 1"],
    ],
)
def test_malformed_conditions_are_refused_by_the_admin_form(conditions: Any, db: None) -> None:
    # given a rule form with malformed conditions
    form = PolicyRuleForm(data={
        "order": 1, "name": "bad", "enabled": True, "job_type": "*", "decision": "block",
        "approvers": 1, "conditions": __import__("json").dumps(conditions), "redact_fields": "[]",
    })
    # then it does not validate, and says why in the conditions field
    assert not form.is_valid()
    assert "conditions" in form.errors
    assert conditions_errors(conditions)


def test_well_formed_rule_saves_through_the_admin_form(db: None) -> None:
    # given a valid rule as an operator types it in the admin
    form = PolicyRuleForm(data={
        "order": 10, "name": "big payments need two", "enabled": True, "job_type": "payments.*",
        "scope": "payments", "risk": "", "decision": "require_approval", "approvers": 2,
        "checkpoint": "before_commit", "reason": "large amounts",
        "conditions": '[{"path": "amount", "op": "gte", "value": 10000}]', "redact_fields": "[]",
    })
    # then it saves
    assert form.is_valid(), form.errors
    saved = form.save()
    assert saved.conditions == [{"path": "amount", "op": "gte", "value": 10000}]


def test_redact_rule_without_fields_is_refused(db: None) -> None:
    form = PolicyRuleForm(data={
        "order": 1, "name": "r", "enabled": True, "job_type": "*", "decision": "redact", "approvers": 1,
        "conditions": "[]", "redact_fields": "[]",
    })
    assert not form.is_valid()
    assert "redact_fields" in form.errors


def test_grants_through_groups_and_globs(make_principal: Any) -> None:
    # given a user with a direct glob grant and a group grant
    user = make_principal("carol", grants=("crm:*",)).user
    group = Group.objects.create(name="publishers")
    Grant.objects.create(group=group, permission="publish:format")
    user.groups.add(group)
    # when its grants are computed
    grants = principal_grants(principal=user)
    # then both count, and the glob covers every crm: permission
    assert grants == {"crm:*", "publish:format"}
    assert missing_permissions(required=["crm:write", "publish:format", "mail:send"], grants=grants) == ["mail:send"]


def test_revoke_grant_command(make_principal: Any, capsys: Any) -> None:
    # given a principal with two grants
    make_principal("dave", grants=("crm:write", "crm:read"))
    # when one is revoked by the command
    call_command("revoke_grant", "dave", "--grant", "crm:write")
    # then only the other remains, and revoking it again fails loudly
    assert set(Grant.objects.filter(user__username="dave").values_list("permission", flat=True)) == {"crm:read"}
    assert "revoked: crm:write" in capsys.readouterr().out
    with pytest.raises(CommandError):
        call_command("revoke_grant", "dave", "--grant", "crm:write")


def test_create_principal_prints_token(db: None, capsys: Any) -> None:
    call_command("create_principal", "erin", "--grant", "demo:run", "--quiet")
    token = capsys.readouterr().out.strip()
    from rest_framework.authtoken.models import Token

    assert Token.objects.get(user__username="erin").key == token


def test_secrets_round_trip_and_scrub() -> None:
    # given an encrypted secret
    blob = encrypt_secrets({"api_token": "tok-abcdef-123"})
    # then the ciphertext does not contain it and decrypts back
    assert "tok-abcdef-123" not in blob
    assert decrypt_secrets(blob) == {"api_token": "tok-abcdef-123"}
    # and scrubbing masks it wherever it is echoed
    assert secrets_scrub({"msg": "bad token tok-abcdef-123", "n": [1, "tok-abcdef-123"]}, ["tok-abcdef-123"]) == {
        "msg": "bad token [SECRET]", "n": [1, "[SECRET]"]}


def test_scopes_cli_option_sets_worker_scopes(monkeypatch: Any) -> None:
    # given the --scopes preload option's handler (monkeypatch restores what it changes)
    from django.conf import settings

    from config.celery import _apply_scopes_option

    monkeypatch.setenv("JOBS_WORKER_SCOPES", "*")
    monkeypatch.setattr(settings, "JOBS_WORKER_SCOPES", ["*"])
    # when the worker is started with --scopes "crm, demo"
    _apply_scopes_option(options={"scopes": "crm, demo"})
    # then the worker's scope lock is exactly those scopes
    from jobs.worker.recheck import scope_allowed, worker_scopes

    assert worker_scopes() == ["crm", "demo"]
    assert scope_allowed("crm") and not scope_allowed("store")
