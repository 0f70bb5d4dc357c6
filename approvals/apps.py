from django.apps import AppConfig
from django.utils.module_loading import import_string

from jobs.hooks import approval_gate_register


class ApprovalsConfig(AppConfig):
    name = "approvals"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Jobs reaches approvals only through the gate it declares (jobs.hooks).
        approval_gate_register(import_string("approvals.gate.ApprovalsGate")())
        # Its analytics join /metrics (imported here: both modules import models).
        register_collector = import_string("jobs.metrics.scrape_collector_register")
        register_collector(import_string("approvals.metrics.ApprovalStatsCollector")())
