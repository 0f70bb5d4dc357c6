"""Governance writes: principals (user, grants, token) and revoking grants."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from rest_framework.authtoken.models import Token

from governance.models import Grant


@dataclass
class PrincipalResult:
    user: Any
    token: str
    grants: set[str]
    created: bool


def principal_ensure(
    *,
    username: str,
    grants: list[str],
    staff: bool = False,
    superuser: bool = False,
    password: str | None = None,
    token_key: str | None = None,
) -> PrincipalResult:
    """Create or update a principal: the user, its grants (added, never removed here) and token."""
    User = get_user_model()
    with transaction.atomic():
        user, created = User.objects.get_or_create(username=username)
        user.is_active = True
        user.is_staff = user.is_staff or staff
        user.is_superuser = user.is_superuser or superuser
        if password:
            user.set_password(password)
        elif created:
            user.set_unusable_password()
        user.save()
        for perm in grants:
            Grant.objects.get_or_create(user=user, permission=perm)
        if token_key:
            Token.objects.filter(user=user).exclude(key=token_key).delete()
            token, _ = Token.objects.get_or_create(user=user, defaults={"key": token_key})
        else:
            token, _ = Token.objects.get_or_create(user=user)
        held = set(Grant.objects.filter(user=user).values_list("permission", flat=True))
    return PrincipalResult(user=user, token=token.key, grants=held, created=created)


def grant_revoke(*, username: str, permissions: list[str]) -> list[str]:
    """Remove the named grants from a user (not from its groups); return those that were held.

    A job already admitted with one of these grants is stopped by the worker's re-check
    (``dead_lettered``, ``policy_violation``) before any handler runs.
    """
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        return []
    held = list(
        Grant.objects.filter(user=user, permission__in=permissions).values_list("permission", flat=True)
    )
    Grant.objects.filter(user=user, permission__in=permissions).delete()
    return sorted(held)
