from __future__ import annotations

import fnmatch
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.utils import timezone

from governance.cache import GovernanceSnapshot, governance_snapshot
from governance.models import WebhookSecret
from governance.secrets import text_decrypt


def principal_grants(
    *, principal: AbstractBaseUser | AnonymousUser, snapshot: GovernanceSnapshot | None = None
) -> set[str]:
    """The grant strings a principal holds, directly or through its groups (cached behind the
    governance version, see ``governance.cache``; ``snapshot`` when the caller took one)."""
    if not principal.pk or not principal.is_active:
        return set()
    return set((snapshot or governance_snapshot()).grants(principal.pk))


def missing_permissions(*, required: list[str] | tuple[str, ...], grants: set[str]) -> list[str]:
    """Required permissions not covered by ``grants`` (a grant may be a glob such as ``crm:*``)."""
    return [
        perm for perm in required if not any(fnmatch.fnmatchcase(perm, grant) for grant in grants)
    ]


def webhook_secret_for(*, principal: AbstractBaseUser | AnonymousUser) -> str | None:
    """The principal's current webhook signing secret (``whsec_…``), or None if it has none yet."""
    if not principal.pk:
        return None
    row = WebhookSecret.objects.filter(principal_id=principal.pk).first()
    return text_decrypt(row.secret) if row is not None else None


def webhook_signing_secrets(*, principal_id: int) -> list[str]:
    """Every secret that signs the principal's webhooks now: the current one, and the previous
    one while its overlap after a rotation lasts. Empty if the principal has none yet."""
    row = WebhookSecret.objects.filter(principal_id=principal_id).first()
    if row is None:
        return []
    out = [text_decrypt(row.secret)]
    overlap = timedelta(seconds=settings.WEBHOOK_SECRET_OVERLAP_S)
    if row.previous and row.rotated_at is not None and timezone.now() < row.rotated_at + overlap:
        out.append(text_decrypt(row.previous))
    return out
