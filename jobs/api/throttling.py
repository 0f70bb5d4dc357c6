"""A bounded submit rate per principal, so one runaway agent cannot take the API from the others.

``API_SUBMIT_RATE`` (``"<n>/<s|sec|m|min|h|hour|d|day>"``, or ``off``) is counted per
authenticated principal (every token of a principal shares its budget) in fixed windows, in
Django's cache: Redis when the broker is Redis (shared by every web process), else the process's
local memory (``docs/api.md`` "Limits"). The counter is one atomic ``INCR`` per submit. Over the
budget the answer is ``429 throttled`` with ``Retry-After`` (seconds to the next window).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

logger = logging.getLogger(__name__)

_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
            "d": 86400, "day": 86400}


def parse_rate(rate: str | None) -> tuple[int, int] | None:
    """``"600/min"`` → ``(600, 60)``; ``""``/``off``/``none`` → ``None`` (no limit).

    Raises ValueError for anything else (settings turn that into ImproperlyConfigured).
    """
    text = (rate or "").strip().lower()
    if text in {"", "off", "none", "0"}:
        return None
    count, _, period = text.partition("/")
    if not count.isdigit() or int(count) < 1 or period not in _PERIODS:
        raise ValueError(f"a rate is '<count>/<{'|'.join(_PERIODS)}>' or 'off', got {rate!r}")
    return int(count), _PERIODS[period]


class SubmitRateThrottle(BaseThrottle):
    """Fixed-window counter per principal for ``POST /api/v1/jobs``."""

    cache_prefix = "throttle:submit"

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        rate = parse_rate(settings.API_SUBMIT_RATE)
        if rate is None or request.user is None or not request.user.is_authenticated:
            return True
        allowed, period = rate
        now = time.time()
        window = int(now // period)
        key = f"{self.cache_prefix}:{request.user.pk}:{period}:{window}"
        # incr() is atomic on Redis (and under the local-memory cache's lock), so concurrent
        # submits cannot both take the last slot.
        try:
            used = self._count(key, timeout=period + 1)
        except Exception:
            # The cache is down (so is the broker, when they share Redis): submits still work,
            # jobs wait in the database; only the rate limit is off until it answers again.
            logger.warning("submit rate limit skipped: cache unavailable", exc_info=True)
            return True
        if used > allowed:
            self._wait = (window + 1) * period - now
            return False
        return True

    @staticmethod
    def _count(key: str, *, timeout: int) -> int:
        """This window's count after this submit. The window's first submit creates the key with
        ``add`` (set-if-absent: of two racing firsts, one creates and the other increments)."""
        try:
            return int(cache.incr(key))
        except ValueError:  # no count yet in this window
            if cache.add(key, 1, timeout=timeout):
                return 1
            return int(cache.incr(key))

    def wait(self) -> float | None:
        return None if self._wait is None else float(max(1, math.ceil(self._wait)))
