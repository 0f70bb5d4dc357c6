"""Task status notifications (``notifications/tasks/status``, 2025-11-25), best effort.

Each task created in a session is watched until it ends. One loop, started with the app, reads
every watched job in one query each ``MCP_STATUS_NOTIFY_S`` and sends a notification to the
session whose task changed. Without a related request the SDK routes it to the session's
standalone GET stream: a client that listens there receives it, otherwise it is dropped —
polling (``tasks/get``) stays the reliable way. A session that has closed is forgotten at its
first failed send.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio
from django.conf import settings
from mcp import types
from mcp.server.session import ServerSession

from jobs.models import Job
from mcp_server.db import in_db
from mcp_server.mapping import TERMINAL_TASK_STATUSES, snapshot, task_for
from mcp_server.selectors import jobs_by_id

logger = logging.getLogger(__name__)


@dataclass
class _Watch:
    session: ServerSession
    last: tuple[str, str, float | None]


@dataclass
class TaskStatusWatcher:
    watches: dict[str, _Watch] = field(default_factory=dict)

    def watch(self, *, session: ServerSession, job: Job) -> None:
        if task_for(job).status not in TERMINAL_TASK_STATUSES:
            self.watches[job.pk] = _Watch(session=session, last=snapshot(job))

    async def run(self) -> None:
        """Check the watched tasks forever (cancelled with the app's task group)."""
        while True:
            await anyio.sleep(float(settings.MCP_STATUS_NOTIFY_S))
            if self.watches:
                try:
                    await self.check_once()
                except Exception:  # a database hiccup must not end the loop
                    logger.warning("task status check failed", exc_info=True)

    async def check_once(self) -> None:
        jobs = await in_db(jobs_by_id, job_ids=list(self.watches))
        for job_id, watch in list(self.watches.items()):
            job = jobs.get(job_id)
            if job is None:
                self.watches.pop(job_id, None)
                continue
            now = snapshot(job)
            if now == watch.last:
                continue
            watch.last = now
            task = task_for(job)
            if task.status in TERMINAL_TASK_STATUSES:
                self.watches.pop(job_id, None)
            try:
                await watch.session.send_notification(types.ServerNotification(types.TaskStatusNotification(
                    params=types.TaskStatusNotificationParams(**task.model_dump()),
                )))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self.forget(watch.session)

    def forget(self, session: ServerSession) -> None:
        for job_id in [k for k, w in self.watches.items() if w.session is session]:
            self.watches.pop(job_id, None)
