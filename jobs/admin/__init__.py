"""The jobs app's admin: job pages, the dead-letter queue console, and the task monitor (its
URLs are mounted by the project at ``admin/monitor/``). Django's admin autodiscovery imports
this package; importing the modules registers their ModelAdmins (``policy`` re-registers the
policy rule admin with the what-if action)."""

from jobs.admin import dead_letter, jobs, monitor, policy

__all__ = ["dead_letter", "jobs", "monitor", "policy"]
