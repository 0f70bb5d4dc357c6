"""Serve this host's process metrics for Prometheus (run one on every worker host).

The platform's processes write their samples to files under PROMETHEUS_MULTIPROC_DIR on their
own host. On a web host ``/metrics`` reads them; on a host that runs only workers nothing does,
so this command serves them (``jobs.metrics.process_metrics_wsgi_app``): the counters and
histograms the workers recorded (finished jobs, stage durations, refused messages), without the
database gauges, which ``/metrics`` on any web host already gives. With METRICS_TOKEN set, a
scraper must send ``Authorization: Bearer <METRICS_TOKEN>``.
"""

from __future__ import annotations

import signal
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.metrics import process_metrics_wsgi_app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Command(BaseCommand):
    help = "Serve this host's process metrics (PROMETHEUS_MULTIPROC_DIR) in Prometheus text format."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=9808, help="port (default 9808)")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.PROMETHEUS_MULTIPROC_DIR:
            raise CommandError("PROMETHEUS_MULTIPROC_DIR is empty: there is nothing to serve")
        server = make_server(options["host"], options["port"], process_metrics_wsgi_app(token=settings.METRICS_TOKEN),
                             handler_class=_QuietHandler)
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.stdout.write(f"serving process metrics of {settings.PROMETHEUS_MULTIPROC_DIR} on "
                          f"http://{options['host']}:{options['port']}/metrics")
        stop.wait()
        server.shutdown()
        server.server_close()
