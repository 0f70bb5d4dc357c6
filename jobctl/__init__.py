"""jobctl: the Python client and command line of the governed job platform.

It talks to the platform's REST API only (``JOBS_URL``, ``JOBS_TOKEN``) and imports nothing of
the platform itself, so an agent can install and use it anywhere.
"""

from jobctl._core import TERMINAL, ApiError, Config, Event, JobFailed, is_terminal
from jobctl.aio import AsyncClient
from jobctl.client import Client

__all__ = ["TERMINAL", "ApiError", "AsyncClient", "Client", "Config", "Event", "JobFailed", "is_terminal"]
