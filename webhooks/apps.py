from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    """Signed, durable webhook deliveries: an add-on on top of jobs (see docs/operations.md)."""

    name = "webhooks"
    default_auto_field = "django.db.models.BigAutoField"
