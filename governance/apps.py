from django.apps import AppConfig
from django.utils.module_loading import import_string


class GovernanceConfig(AppConfig):
    name = "governance"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Changes to rules, grants and group membership bump the version the caches follow.
        import_string("governance.signals.connect")()
