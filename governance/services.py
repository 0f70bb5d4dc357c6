"""Governance writes: principals (user, grants, token, webhook secret) and revoking grants."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.utils import timezone
from rest_framework.authtoken.models import Token

from governance.models import Grant, WebhookSecret
from governance.secrets import text_decrypt, text_encrypt

WEBHOOK_SECRET_PREFIX = "whsec_"
# Standard Webhooks asks for 24 to 64 random bytes.
WEBHOOK_SECRET_BYTES = 32


@dataclass
class PrincipalResult:
    user: Any
    token: str
    grants: set[str]
    created: bool
    webhook_secret: str = ""


def principal_ensure(
    *,
    username: str,
    grants: list[str],
    staff: bool = False,
    superuser: bool = False,
    password: str | None = None,
    token_key: str | None = None,
) -> PrincipalResult:
    """Create or update a principal: the user, its grants (added, never removed here), token and
    webhook signing secret (made once, kept on later calls)."""
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
        webhook_secret = webhook_secret_ensure(principal_id=user.pk)
    return PrincipalResult(user=user, token=token.key, grants=held, created=created, webhook_secret=webhook_secret)


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


def webhook_secret_new() -> str:
    """A fresh signing secret in the Standard Webhooks form ``whsec_<base64>``."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(WEBHOOK_SECRET_BYTES)).decode()


def webhook_secret_ensure(*, principal_id: int) -> str:
    """The principal's current signing secret, made now if it has none."""
    row = WebhookSecret.objects.filter(principal_id=principal_id).first()
    if row is None:
        fresh = webhook_secret_new()
        row, _ = WebhookSecret.objects.get_or_create(principal_id=principal_id,
                                                     defaults={"secret": text_encrypt(fresh)})
    return text_decrypt(row.secret)


@dataclass
class RotatedSecret:
    secret: str
    previous_valid_until: datetime | None


def webhook_secret_rotate(*, principal: AbstractBaseUser | AnonymousUser) -> RotatedSecret:
    """Replace the principal's signing secret; the one it replaces keeps signing beside it for
    ``WEBHOOK_SECRET_OVERLAP_S`` (a second rotation inside that window drops the oldest)."""
    principal_id = principal.pk
    if principal_id is None:
        raise ValueError("an anonymous user has no webhook secret")
    now = timezone.now()
    fresh = webhook_secret_new()
    with transaction.atomic():
        row = WebhookSecret.objects.select_for_update().filter(principal_id=principal_id).first()
        if row is None:
            WebhookSecret.objects.create(principal_id=principal_id, secret=text_encrypt(fresh))
            return RotatedSecret(secret=fresh, previous_valid_until=None)
        row.previous, row.secret, row.rotated_at = row.secret, text_encrypt(fresh), now
        row.save(update_fields=["previous", "secret", "rotated_at"])
    return RotatedSecret(secret=fresh, previous_valid_until=now + timedelta(seconds=settings.WEBHOOK_SECRET_OVERLAP_S))
