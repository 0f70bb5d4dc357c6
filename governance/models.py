"""Principals' grants and the ordered policy rules."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Grant(models.Model):
    """A permission string (``crm:write``; ``crm:*`` covers every ``crm:`` grant) for a user or group."""

    permission = models.CharField(max_length=100)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="grants"
    )
    group = models.ForeignKey(Group, null=True, blank=True, on_delete=models.CASCADE, related_name="grants")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(Q(user__isnull=False) & Q(group__isnull=True))
                | (Q(user__isnull=True) & Q(group__isnull=False)),
                name="grant_user_xor_group",
            ),
            models.UniqueConstraint(fields=("permission", "user"), name="grant_user_perm_uniq"),
            models.UniqueConstraint(fields=("permission", "group"), name="grant_group_perm_uniq"),
        ]

    def __str__(self) -> str:
        holder = self.user or self.group
        return f"{self.permission} → {holder}"


class Decision(models.TextChoices):
    ALLOW = "allow"
    BLOCK = "block"
    REQUIRE_APPROVAL = "require_approval"
    REDACT = "redact"


class Checkpoint(models.TextChoices):
    BEFORE_EXECUTE = "before_execute"
    BEFORE_COMMIT = "before_commit"
    BOTH = "both"


class PolicyRule(models.Model):
    """One ordered rule. First enabled match by ``order`` wins; see docs/governance.md."""

    order = models.IntegerField(default=100)
    name = models.CharField(max_length=100)
    enabled = models.BooleanField(default=True)
    job_type = models.CharField(max_length=128, default="*", help_text="glob, e.g. crm.* ")
    scope = models.CharField(max_length=64, blank=True, default="", help_text="blank = any")
    principal = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    group = models.ForeignKey(Group, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    risk = models.CharField(max_length=16, blank=True, default="", help_text="blank = any")
    conditions = models.JSONField(
        default=list,
        blank=True,
        help_text='list of {"path": "amount", "op": "gt", "value": 1000}; all must hold',
    )
    decision = models.CharField(max_length=32, choices=Decision.choices)
    approvers = models.PositiveSmallIntegerField(default=1)
    checkpoint = models.CharField(max_length=32, choices=Checkpoint.choices, blank=True, default="")
    redact_fields = models.JSONField(default=list, blank=True)
    reason = models.CharField(max_length=300, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("order", "id")

    def __str__(self) -> str:
        return f"#{self.order} {self.name} → {self.decision}"


class WebhookSecret(models.Model):
    """A principal's webhook signing secret (``whsec_<base64>``), Fernet-encrypted at rest.

    After a rotation the ``previous`` secret keeps signing beside the new one until
    ``rotated_at`` + ``WEBHOOK_SECRET_OVERLAP_S``, so receivers can switch without losing events.
    """

    principal = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="webhook_secret"
    )
    secret = models.TextField(help_text="encrypted")
    previous = models.TextField(blank=True, default="", help_text="encrypted; signs until the overlap ends")
    rotated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"webhook secret of principal {self.principal_id}"


class GovernanceVersion(models.Model):
    """One row whose token changes with every change to policy rules, grants or group
    membership (``governance.cache``): readers cache those behind it."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    token = models.CharField(max_length=32)
    changed_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"governance version {self.token}"
