"""The schema endpoint (kept apart from ``jobs.api.schema``, which drf-spectacular imports while
its own views module is still loading)."""

from __future__ import annotations

import threading

from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.request import Request
from rest_framework.response import Response


class SchemaView(SpectacularAPIView):
    """``GET /api/schema/``, generated one request at a time.

    drf-spectacular resolves its extensions lazily and not thread-safely (``plumbing._load_class``
    sets a class attribute to None while another thread still reads it): two first requests at
    once on a threaded server answered 500. Generating under a lock makes them wait instead.
    """

    _lock = threading.Lock()
    # Public: no credentials are read, so a stale token does not turn the schema into a 401.
    authentication_classes = ()

    def _get_schema_response(self, request: Request) -> Response:
        with self._lock:
            return super()._get_schema_response(request)  # type: ignore[no-any-return]


class SchemaDocsView(SpectacularSwaggerView):
    """``GET /api/docs/``: Swagger UI over the schema; public like it."""

    authentication_classes = ()
