"""``jobctl``: the job platform from a shell.

    export JOBS_URL=http://127.0.0.1:8000 JOBS_TOKEN=<token>
    jobctl submit demo.long_running '{"steps": 5}' --wait     # live progress, exit status of the job
    jobctl events job_…                                       # follow a job's events
    jobctl --json get job_…                                   # JSON for scripts

Exit status: 0 done (the job succeeded, or the request was accepted); 1 the job ended without
succeeding (dead-lettered, cancelled, blocked); 2 the platform refused the request (or a usage
error); 3 the job had not finished when the wait ran out; 4 the platform could not be reached.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

import httpx

from jobctl._core import ApiError, Config, Event, is_terminal
from jobctl.client import Client

EXIT_OK, EXIT_JOB_FAILED, EXIT_REFUSED, EXIT_NOT_DONE, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
BAR_WIDTH = 28


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, one line per change otherwise."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self._drawn = False

    def bar(self, pct: float, message: str) -> None:
        if not self.enabled:
            return
        filled = int(BAR_WIDTH * max(0.0, min(100.0, pct)) / 100)
        line = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {pct:5.1f}%  {message}"
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r" + line[: width - 1] + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


class Cli:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json = bool(args.json)
        self.client = Client(config=Config.from_env(url=args.url, token=args.token, session=args.session,
                                                    timeout=args.http_timeout))
        self.progress = Progress(sys.stderr, enabled=not self.json)

    # --- output ------------------------------------------------------------------------------
    def out(self, value: Any, human: str | None = None) -> None:
        if self.json or human is None:
            print(json.dumps(value, indent=None if self.json else 2, default=str))
        else:
            print(human)

    def job_summary(self, job: dict[str, Any]) -> str:
        lines = [f"{job['job_id']}  {job.get('job_type', '')}  {job.get('status')}".replace("    ", "  ")]
        if job.get("progress") and not is_terminal(job):
            lines.append(f"  {'progress':<11} {job['progress']['pct']:.0f}%  {job['progress']['message']}".rstrip())
        for key in ("result", "error", "error_class", "reason"):
            if job.get(key) not in (None, "", {}):
                value = job[key] if isinstance(job[key], str) else json.dumps(job[key], default=str)
                lines.append(f"  {key:<11} {value}")
        return "\n".join(lines)

    def status_of(self, job: dict[str, Any]) -> int:
        if not is_terminal(job):
            return EXIT_NOT_DONE
        return EXIT_OK if job.get("status") == "succeeded" else EXIT_JOB_FAILED

    # --- following a job -----------------------------------------------------------------------
    def follow(self, job_id: str, timeout: float | None) -> int:
        """Show the job's events (progress bar, status changes) until it ends or ``timeout``
        passes; then print the job and answer the exit status it deserves."""
        failure: list[BaseException] = []

        def run() -> None:
            try:
                for event in self.client.events(job_id):
                    self.show_event(event)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failure.append(exc)

        # A thread, so the wait can end at ``timeout`` even while the stream is idle.
        follower = threading.Thread(target=run, name="jobctl-events", daemon=True)
        follower.start()
        follower.join(timeout)
        self.progress.finish()
        if failure:
            raise failure[0]
        job = self.client.get(job_id)
        if not is_terminal(job):
            self.progress.line(f"still {job['status']} after {timeout:g}s" if timeout else f"still {job['status']}")
        self.out(job, self.job_summary(job))
        return self.status_of(job)

    def show_event(self, event: Event) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        if event.event == "progress":
            self.progress.bar(float(data.get("pct") or 0.0), str(data.get("message") or ""))
        elif event.event == "status":
            self.progress.line(f"{data.get('event')}: {data.get('from') or '-'} -> {data.get('to')}")

    # --- verbs -------------------------------------------------------------------------------
    def submit(self) -> int:
        a = self.args
        fields: dict[str, Any] = {
            "priority": a.priority, "run_after": a.run_after,
            "constraints": dict(a.constraint) if a.constraint else None,
        }
        job = self.client.submit(a.job_type, inputs_of(a), session=a.session, idempotency_key=a.key, **fields)
        if a.wait is None:
            self.out(job, f"{job['job_id']}  {job['status']}\n"
                          f"  status  {job['status_url']}\n  events  {job['stream_url']}")
            return EXIT_OK
        return self.follow(job["job_id"], a.wait or None)

    def get(self) -> int:
        job = self.client.get(self.args.job_id, wait=self.args.wait)
        self.out(job, self.job_summary(job))
        return EXIT_OK

    def wait(self) -> int:
        return self.follow(self.args.job_id, self.args.timeout)

    def events(self) -> int:
        if not self.json:
            return self.follow(self.args.job_id, None)
        last: dict[str, Any] = {}
        for event in self.client.events(self.args.job_id, last_event_id=self.args.last_event_id):
            print(json.dumps({"id": event.id, "event": event.event, "data": event.data}), flush=True)
            last = event.data if event.event == "end" and isinstance(event.data, dict) else last
        return EXIT_OK if last.get("status") == "succeeded" else EXIT_JOB_FAILED

    def list(self) -> int:
        jobs = self.client.list_jobs(session=self.args.filter_session, status=self.args.status, limit=self.args.limit)
        self.out(jobs, "\n".join(f"{j['job_id']}  {j['job_type']:<28} {j['status']}" for j in jobs) or "(none)")
        return EXIT_OK

    def cancel(self) -> int:
        body = self.client.cancel(self.args.job_id)
        self.out(body, f"{body['job_id']}  {'cancelling' if body.get('cancelling') else body['status']}")
        return EXIT_OK

    def cancel_session(self) -> int:
        body = self.client.cancel_session(self.args.session_id, status=self.args.status or None,
                                          job_type=self.args.job_type)
        self.out(body, f"cancelled {body['cancelled']}, cancelling {body['cancelling']}")
        return EXIT_OK

    def approvals(self) -> int:
        status = None if self.args.status == "all" else self.args.status
        items = self.client.approvals(status)
        self.out(items, "\n".join(
            f"{a['approval_id']:>6}  {a['job_id']}  {a['job_type']:<28} {a['checkpoint']:<15} {a['status']}"
            for a in items) or "(none)")
        return EXIT_OK

    def approve(self) -> int:
        inputs = json.loads(self.args.inputs) if self.args.inputs else None
        body = self.client.approve(self.args.approval_id, comment=self.args.comment, inputs=inputs)
        self.out(body, f"approval {body['approval_id']}  {body['status']}  (job {body['job_id']} {body['job_status']})")
        return EXIT_OK

    def deny(self) -> int:
        body = self.client.deny(self.args.approval_id, comment=self.args.comment)
        self.out(body, f"approval {body['approval_id']}  {body['status']}  (job {body['job_id']} {body['job_status']})")
        return EXIT_OK

    def replay(self) -> int:
        body = self.client.replay(self.args.job_id)
        self.out(body, f"{body['job_id']}  {body['status']}  (stage {body['stage']})")
        return EXIT_OK

    def me(self) -> int:
        body = self.client.me()
        sessions = "\n".join(f"  {s['session_id']:<24} {s['total']:>6} jobs, {s['open']} open"
                             for s in body["sessions"])
        self.out(body, f"{body['principal']}{' (staff)' if body['is_staff'] else ''}\n"
                       f"  grants  {', '.join(body['grants']) or '-'}\n{sessions}")
        return EXIT_OK

    def batch(self) -> int:
        if self.args.file == "-":
            raw = sys.stdin.read()
        else:
            with open(self.args.file, encoding="utf-8") as handle:
                raw = handle.read()
        data = json.loads(raw)
        jobs = data["jobs"] if isinstance(data, dict) else data
        results = self.client.batch(jobs)
        accepted = sum(1 for r in results if r["code"] in (200, 202))
        self.out(results, "\n".join(
            f"{r['index']:>5}  {r['code']}  {r['job_id']}  {r['status']}" if r.get("job_id") and not r.get("error")
            else f"{r['index']:>5}  {r['code']}  {r.get('error')}: {r.get('detail', '')}"
            for r in results) + f"\n{accepted} of {len(results)} accepted")
        return EXIT_OK if accepted == len(results) else EXIT_REFUSED


def _pair(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def inputs_of(args: argparse.Namespace) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if args.inputs:
        loaded = json.loads(args.inputs)
        if not isinstance(loaded, dict):
            raise SystemExit("jobctl: inputs must be a JSON object")
        inputs.update(loaded)
    inputs.update(dict(args.input or []))
    return inputs


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a flag given before the verb is not reset by the verb's own parser.
    common.add_argument("--url", default=argparse.SUPPRESS, help="platform URL (default: $JOBS_URL)")
    common.add_argument("--token", default=argparse.SUPPRESS, help="API token (default: $JOBS_TOKEN)")
    common.add_argument("--session", default=argparse.SUPPRESS,
                        help="agent session of submitted jobs (default: $JOBS_SESSION or 'jobctl')")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON, no progress bar")
    common.add_argument("--http-timeout", type=float, default=argparse.SUPPRESS,
                        help="seconds per HTTP request (default 30)")

    parser = argparse.ArgumentParser(
        prog="jobctl", parents=[common], description="Submit, follow and control jobs of the governed job platform.",
        epilog="Exit status: 0 done; 1 the job ended without succeeding; 2 refused (or usage); "
               "3 not finished when the wait ran out; 4 platform unreachable.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        return verbs.add_parser(name, parents=[common], help=help_text, description=help_text)

    p = verb("submit", "submit a job (--wait: follow it with a progress bar until it ends)")
    p.add_argument("job_type")
    p.add_argument("inputs", nargs="?", help="inputs as a JSON object")
    p.add_argument("-i", "--input", action="append", type=_pair, metavar="KEY=VALUE",
                   help="one input (VALUE is JSON if it parses, else a string); repeatable")
    p.add_argument("--wait", nargs="?", type=float, const=0.0, default=None, metavar="SECONDS",
                   help="follow the job until it ends (or SECONDS pass); exit status follows the job")
    p.add_argument("--key", help="idempotency key (default: a fresh one, reused by retries)")
    p.add_argument("--priority", type=int)
    p.add_argument("--run-after", help="ISO 8601 time before which the job does not start")
    p.add_argument("--constraint", action="append", type=_pair, metavar="KEY=VALUE",
                   help="e.g. max_runtime_s=30, requires_human_ack=true; repeatable")

    p = verb("get", "show a job (--wait N: once it has ended, or after N seconds)")
    p.add_argument("job_id")
    p.add_argument("--wait", type=float, metavar="SECONDS")

    p = verb("wait", "follow a job with a progress bar until it ends")
    p.add_argument("job_id")
    p.add_argument("--timeout", type=float, metavar="SECONDS")

    p = verb("events", "follow a job's event stream (status changes and progress)")
    p.add_argument("job_id")
    p.add_argument("--last-event-id", help="resume after this event id (with --json)")

    p = verb("list", "list jobs")
    p.add_argument("--session-id", dest="filter_session")
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=50)

    p = verb("cancel", "cancel one job")
    p.add_argument("job_id")

    p = verb("cancel-session", "cancel a session's unfinished jobs")
    p.add_argument("session_id")
    p.add_argument("--status", action="append", help="only jobs in this status; repeatable")
    p.add_argument("--job-type")

    p = verb("approvals", "list approval requests")
    p.add_argument("--status", default="pending", help="pending (default), approved, denied, expired, … or all")

    p = verb("approve", "approve a request")
    p.add_argument("approval_id", help="the apr_… id")
    p.add_argument("--comment", default="")
    p.add_argument("--inputs", help="modified inputs, as a JSON object")

    p = verb("deny", "deny a request")
    p.add_argument("approval_id", help="the apr_… id")
    p.add_argument("--comment", default="")

    p = verb("replay", "replay a dead-lettered job (operators)")
    p.add_argument("job_id")

    verb("me", "who am I: principal, grants, sessions")

    p = verb("batch", "submit many jobs from a JSON file ('-' for stdin): a list, or {\"jobs\": [...]}")
    p.add_argument("file")
    return parser


VERBS: dict[str, Callable[[Cli], int]] = {
    "submit": Cli.submit, "get": Cli.get, "wait": Cli.wait, "events": Cli.events, "list": Cli.list,
    "cancel": Cli.cancel, "cancel-session": Cli.cancel_session, "approvals": Cli.approvals,
    "approve": Cli.approve, "deny": Cli.deny, "replay": Cli.replay, "me": Cli.me, "batch": Cli.batch,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name, default in (("url", None), ("token", None), ("session", None), ("json", False), ("http_timeout", 30.0)):
        if not hasattr(args, name):
            setattr(args, name, default)
    cli = Cli(args)
    try:
        return VERBS[args.verb](cli)
    except ApiError as exc:
        cli.progress.finish()
        if cli.json:
            print(json.dumps({"status": exc.status, **exc.body}), file=sys.stderr)
        else:
            print(f"jobctl: {exc}", file=sys.stderr)
            if exc.body.get("errors"):
                print(json.dumps(exc.body["errors"], indent=2), file=sys.stderr)
        # A blocked submit recorded a job that ended at once: the job failed.
        return EXIT_JOB_FAILED if exc.status == 403 and exc.body.get("job_id") else EXIT_REFUSED
    except httpx.TransportError as exc:
        print(f"jobctl: cannot reach {cli.client.config.url}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        cli.progress.finish()
        return 130
    finally:
        cli.client.close()


if __name__ == "__main__":
    sys.exit(main())
