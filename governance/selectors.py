from __future__ import annotations

import fnmatch

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q

from governance.models import Grant


def principal_grants(*, principal: AbstractBaseUser | AnonymousUser) -> set[str]:
    """The grant strings a principal holds, directly or through its groups."""
    if not principal.pk or not principal.is_active:
        return set()
    return set(
        Grant.objects.filter(Q(user_id=principal.pk) | Q(group__user=principal.pk))
        .values_list("permission", flat=True)
        .distinct()
    )


def missing_permissions(*, required: list[str] | tuple[str, ...], grants: set[str]) -> list[str]:
    """Required permissions not covered by ``grants`` (a grant may be a glob such as ``crm:*``)."""
    return [
        perm for perm in required if not any(fnmatch.fnmatchcase(perm, grant) for grant in grants)
    ]
