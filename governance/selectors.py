from __future__ import annotations

import fnmatch

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from governance.cache import GovernanceSnapshot, governance_snapshot


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
