from django.apps import AppConfig

from audit.subjects import subject_register
from jobs.registry import registry


class JobsConfig(AppConfig):
    name = "jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # A job's status is what its audit chain says last: the verifier checks every Job row.
        subject_register(model=self.get_model("Job"))
        registry.load()
