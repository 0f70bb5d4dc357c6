"""Signals the jobs app sends for in-process listeners.

``job_finished`` — a job reached a terminal status (``succeeded``, ``dead_lettered``,
``cancelled``, ``blocked``). Sent after the transition commits, in the process that made it (a
worker, the web server, a command), with ``sender=Job`` and the keyword arguments ``job_id``,
``status`` and ``job_type``. Receivers run with ``send_robust``: one that raises is logged and
does not disturb the caller. Out-of-process listeners use a webhook or a job type's
``on_finish`` task instead.
"""

from __future__ import annotations

from django.dispatch import Signal

job_finished = Signal()
