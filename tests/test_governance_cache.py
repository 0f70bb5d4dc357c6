"""Governance reads cached behind the version token: one read when nothing changed, and every
change — a rule, a grant, a group membership — seen by the very next evaluation."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group

from governance.cache import cache_clear, current_token, governance_snapshot
from governance.models import GovernanceVersion, Grant, PolicyRule
from governance.policy import policy_evaluate
from governance.selectors import principal_grants
from governance.services import grant_revoke

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    cache_clear()


def _evaluate(user: Any, **kw: Any) -> Any:
    return policy_evaluate(principal=user, job_type="demo.noop", scope="demo", risk="low", ack="none",
                           has_commit=False, inputs=kw.pop("inputs", {}), **kw)


def test_unchanged_governance_costs_one_read(principal: Any, django_assert_num_queries: Any) -> None:
    # given rules, grants and groups read once (a group-scoped rule makes groups count)
    user = principal.user
    group = Group.objects.create(name="ops")
    PolicyRule.objects.create(order=1, name="ops only", job_type="crm.*", group=group, decision="block")
    _evaluate(user)
    principal_grants(principal=user)
    # when the worker's re-check reads them again
    with django_assert_num_queries(1):  # the version token
        snapshot = governance_snapshot()
        decision = _evaluate(user, snapshot=snapshot)
        grants = principal_grants(principal=user, snapshot=snapshot)
    # then the answers are those of the database
    assert decision.action == "allow" and "demo:*" in grants


def test_a_rule_saved_or_deleted_is_seen_at_once(principal: Any) -> None:
    user = principal.user
    assert _evaluate(user).action == "allow"
    # when a blocking rule is added
    rule = PolicyRule.objects.create(order=1, name="freeze", job_type="demo.*", decision="block")
    # then the next evaluation blocks; edited, disabled, deleted: each seen at once
    assert _evaluate(user).action == "block"
    rule.decision = "require_approval"
    rule.save()
    assert _evaluate(user).action == "require_approval"
    rule.enabled = False
    rule.save()
    assert _evaluate(user).action == "allow"
    rule.enabled = True
    rule.save()
    assert _evaluate(user).action == "require_approval"
    rule.delete()
    assert _evaluate(user).action == "allow"


def test_grants_and_group_membership_changes_are_seen_at_once(principal: Any) -> None:
    user = principal.user
    assert "publish:x" not in principal_grants(principal=user)
    # when a group holding a grant gets the user, then loses it
    group = Group.objects.create(name="publishers")
    Grant.objects.create(group=group, permission="publish:x")
    assert "publish:x" not in principal_grants(principal=user)
    user.groups.add(group)
    assert "publish:x" in principal_grants(principal=user)
    user.groups.remove(group)
    assert "publish:x" not in principal_grants(principal=user)
    # and a direct grant revoked through the service is gone at once
    assert "net:call" in principal_grants(principal=user)
    grant_revoke(username=user.username, permissions=["net:call"])
    assert "net:call" not in principal_grants(principal=user)


def test_group_scoped_rule_follows_membership(principal: Any) -> None:
    user = principal.user
    group = Group.objects.create(name="interns")
    PolicyRule.objects.create(order=1, name="interns ask", job_type="demo.*", group=group,
                              decision="require_approval")
    assert _evaluate(user).action == "allow"
    user.groups.add(group)
    assert _evaluate(user).action == "require_approval"
    user.groups.clear()
    assert _evaluate(user).action == "allow"


def test_every_change_gets_a_new_random_token(principal: Any) -> None:
    before = current_token()
    PolicyRule.objects.create(order=1, name="a", job_type="x.*", decision="allow")
    after = current_token()
    assert before != after and after is not None and len(after) == 32


def test_without_a_version_row_nothing_is_cached(principal: Any, django_assert_num_queries: Any) -> None:
    # given no version row (a database restored or flushed without it)
    GovernanceVersion.objects.all().delete()
    user = principal.user
    _evaluate(user)
    # when evaluating again, rules are read again (nothing is trusted without a token)
    with django_assert_num_queries(2):  # the missing token, the rules
        _evaluate(user)
    # and a rule added without its bump (the row is gone) is still seen
    PolicyRule.objects.bulk_create([PolicyRule(order=1, name="b", job_type="demo.*", decision="block")])
    assert _evaluate(user).action == "block"
