from django.apps import AppConfig
from django.utils.module_loading import import_string

from jobs.hooks import status_observer_register


class WebhooksConfig(AppConfig):
    """Signed, durable webhook deliveries: an add-on on top of jobs (docs/operations.md)."""

    name = "webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Jobs tells this app about moves to pending_approval or an end through the observer
        # hook it declares (jobs.hooks); the rows are written in the transaction of the move.
        status_observer_register(import_string("webhooks.services.DeliveryRecorder")())
