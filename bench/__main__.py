"""Run the benchmark: ``.venv/bin/python -m bench [--scenarios a,b] [--jobs N] [--rate R] [--quick]``.

Steps: (1) environment defaults (bench database and Redis DB 3), Django setup, a check that the
bare Celery app mirrors the platform's reliability settings; (2) migrate the bench database and
ensure the bench principal; (3) for each selected scenario: purge the bench tables and queues,
run it, stop whatever processes it left; (4) print one table and write
``bench/results/latest.json``. Exit status 1 when a scenario raised, 0 otherwise (a missed
target is a result, not an error).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import harness
from bench.harness import Ctx, Row


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure the governed job platform against bare Celery on PostgreSQL + Redis.",
    )
    parser.add_argument("--scenarios", default="", help="comma-separated scenario names (default: all)")
    parser.add_argument("--jobs", type=int, default=None, help="job count for count-based scenarios")
    parser.add_argument("--rate", type=float, default=50.0, help="steady submit rate per second (default 50)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of steady-rate load")
    parser.add_argument("--quick", action="store_true", help="smaller counts: a smoke run of about a minute")
    parser.add_argument("--concurrency", type=int, default=2, help="worker pool size, both sides (default 2)")
    parser.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                        help="scenario option, repeatable (e.g. -o submit=rest)")
    parser.add_argument("--json", default=str(harness.RESULTS_DIR / "latest.json"), help="where to write JSON")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--lock-wait", type=float, default=900.0,
                        help="seconds to wait for another run on the same database (default 900)")
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.rate <= 0:
        parser.error("--rate must be > 0")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be > 0")
    options: dict[str, str] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--option expects KEY=VALUE, got {item!r}")
        options[key.strip()] = value.strip()
    args.options = options
    return args


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_table(rows: list[Row]) -> str:
    header = ("scenario", "metric", "governed", "bare", "ratio", "target", "met?")
    lines = [
        (
            r.scenario,
            f"{r.metric} ({r.unit})" if r.unit else r.metric,
            _fmt(r.governed),
            _fmt(r.bare),
            "-" if r.ratio is None else f"{r.ratio:.2f}",
            r.target or "-",
            {True: "yes", False: "NO", None: "-"}[r.met],
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    numeric = {2, 3, 4}

    def render(cells: tuple[str, ...]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in pairs)

    out = [render(header), "  ".join("-" * w for w in widths)]
    out += [render(line) for line in lines]
    notes = [f"  {r.scenario} / {r.metric}: {r.note}" for r in rows if r.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("celery", "kombu", "redis", "django", "psycopg"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "?"
    return out


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so every ``finally`` stops its workers.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    harness.configure_environment()
    harness.django_setup()

    from bench.scenarios import discover

    available = discover()
    if args.list:
        for name, module in available.items():
            print(f"{name:20s} {getattr(module, 'DESCRIPTION', '')}")
        return 0
    selected = [s.strip() for s in args.scenarios.split(",") if s.strip()] or list(available)
    unknown = [s for s in selected if s not in available]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(available)}", file=sys.stderr)
        return 2

    drift = harness.check_mirrored_settings()
    if drift:
        print(f"bench.bare_app differs from the platform in: {', '.join(drift)}", file=sys.stderr)
        return 2
    harness.ensure_database()
    with harness.exclusive_run(wait_s=args.lock_wait):
        return _run(args, available, selected)


def _run(args: argparse.Namespace, available: dict[str, Any], selected: list[str]) -> int:
    harness.prepare_database()

    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%S")
    report: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "machine": {"hostname": socket.gethostname(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
        "versions": _versions(),
        "args": {"scenarios": selected, "jobs": args.jobs, "rate": args.rate, "duration": args.duration,
                 "quick": args.quick, "concurrency": args.concurrency, "options": args.options},
        "database_url": os.environ["DATABASE_URL"],
        "broker_url": os.environ["CELERY_BROKER_URL"],
        "scenarios": {},
    }
    all_rows: list[Row] = []
    failed = False
    for name in selected:
        ctx = Ctx(
            scenario=name, jobs=args.jobs, rate=args.rate, duration_s=args.duration, quick=args.quick,
            concurrency=args.concurrency, options=args.options,
            database_url=os.environ["DATABASE_URL"], broker_url=os.environ["CELERY_BROKER_URL"],
            run_dir=harness.RESULTS_DIR / "logs" / stamp / name,
        )
        entry: dict[str, Any] = {"rows": [], "error": None}
        t0 = time.monotonic()
        try:
            ctx.purge()
            ctx.log("running")
            rows = list(available[name].run(ctx))
            for row in rows:
                row.scenario = name
            all_rows += rows
            entry["rows"] = [r.as_dict() for r in rows]
        except (Exception, KeyboardInterrupt) as exc:
            failed = True
            entry["error"] = "".join(traceback.format_exception(exc))
            ctx.log(f"FAILED: {exc!r}")
            if isinstance(exc, KeyboardInterrupt):
                raise
        finally:
            harness.stop_all()
            entry["duration_s"] = round(time.monotonic() - t0, 1)
            entry["extra"] = ctx.extra
            entry["logs"] = str(ctx.run_dir)
            report["scenarios"][name] = entry
            ctx.log(f"done in {entry['duration_s']}s")

    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["rows"] = [r.as_dict() for r in all_rows]
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))

    versions = report["versions"]
    print()
    print(f"bench {report['started_at']}  host={report['machine']['hostname']} cpus={report['machine']['cpus']}  "
          f"python {versions['python']} celery {versions['celery']} kombu {versions['kombu']}  "
          f"concurrency={args.concurrency}{'  (quick)' if args.quick else ''}")
    print(format_table(all_rows))
    cpus = os.cpu_count() or 1
    load = report["machine"]["loadavg_start"][0]
    if load > cpus / 2:
        # Before the run nothing of the benchmark's own was running: this load is other work.
        print(f"\nwarning: the machine was already busy at the start (1-min load {load:.1f} on {cpus} CPUs); "
              "other processes shared the CPUs with both sides, so treat these figures as noisy")
    for name, entry in report["scenarios"].items():
        if entry["error"]:
            print(f"\nscenario {name} FAILED:\n{entry['error']}", file=sys.stderr)
    print(f"\nJSON: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
