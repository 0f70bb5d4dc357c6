"""Every change to what governance decides on bumps its version (``governance.cache``).

Connected in ``GovernanceConfig.ready``. Each receiver runs inside the transaction of the
change, so the new token commits (or rolls back) with it.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models.signals import m2m_changed, post_delete, post_save

from governance.cache import governance_bump
from governance.models import Grant, PolicyRule


def _bump(**_: Any) -> None:
    governance_bump()


def _membership_changed(*, action: str, **_: Any) -> None:
    if action in {"post_add", "post_remove", "post_clear"}:
        governance_bump()


def connect() -> None:
    for model in (PolicyRule, Grant):
        post_save.connect(_bump, sender=model, dispatch_uid=f"governance-bump-save-{model.__name__}")
        post_delete.connect(_bump, sender=model, dispatch_uid=f"governance-bump-delete-{model.__name__}")
    m2m_changed.connect(_membership_changed, sender=get_user_model().groups.through,
                        dispatch_uid="governance-bump-membership")
