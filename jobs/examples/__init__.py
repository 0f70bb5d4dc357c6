"""Example job types shipped with the platform; each exercises one path of the lifecycle."""

from jobs.examples import demo  # noqa: F401
