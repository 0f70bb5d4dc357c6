"""Sampling profiles of the processes a scenario measures (``-o profile=1``), with py-spy.

Wall-clock figures on a shared machine move with the load; the share of CPU samples each
function takes does not. ``Spy`` runs ``py-spy record`` on a process and its children (the
worker's pool) for the duration of a ``with`` block, non-blocking (the target is never paused),
and writes the collapsed stacks to the run's log folder; ``summarize`` turns them into the
functions with the largest inclusive and self shares. Idle threads are not sampled, so the
shares are of CPU time spent in Python (waiting for PostgreSQL is not in them).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

# "function (path/to/module.py:123)" -> "function (module.py)": lines differ, functions matter.
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_name(raw: str) -> str:
    m = _FRAME.match(raw.strip())
    if not m:
        return raw.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/wt", "/work/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


class Spy:
    """``with Spy(pid, out):`` records samples of ``pid`` and its subprocesses into ``out``."""

    def __init__(self, pid: int, output: Path, *, rate: int = 100, children: bool = True) -> None:
        self.pid = pid
        self.output = output
        self.rate = rate
        self.children = children
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def executable() -> str | None:
        """py-spy next to this interpreter (the virtualenv's bin), else on PATH."""
        beside = Path(sys.executable).parent / "py-spy"
        return str(beside) if beside.exists() else shutil.which("py-spy")

    def __enter__(self) -> Spy:
        exe = self.executable()
        if exe is None:
            raise RuntimeError("-o profile=1 needs py-spy (pip install py-spy)")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(self.pid), *(["--subprocesses"] if self.children else []),
             "--nonblocking", "--format", "raw", "--rate", str(self.rate), "--output", str(self.output)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is None:
            return
        # py-spy writes its output on SIGINT, like Ctrl-C.
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


# Inclusive shares are listed for the platform's own code only (every stack runs through
# Celery's and Django's entry points, which would fill the list).
PROJECT_PACKAGES = ("jobs/", "governance/", "audit/", "approvals/", "common/", "config/", "examples/", "bench/")


def _is_project(name: str) -> bool:
    inner = name.rsplit("(", 1)[-1]
    return inner.startswith(PROJECT_PACKAGES) or "/jobs/" in inner


def summarize(path: Path, *, top: int = 25, process_filter: str = "") -> dict[str, Any]:
    """Shares of samples (percent) by function: ``inclusive`` (on the stack; the platform's own
    functions) and ``self`` (on top of the stack; any code).

    ``process_filter``: keep only stacks whose process line contains it.
    """
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"samples": 0, "inclusive": [], "self": [], "file": str(path)}
    for line in lines:
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        frames = stack.split(";")
        if frames and frames[0].startswith("process "):
            if process_filter and process_filter not in frames[0]:
                continue
            frames = frames[1:]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        count = int(count_s)
        total += count
        for name in {_frame_name(f) for f in frames}:
            inclusive[name] += count
        own[_frame_name(frames[-1])] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100.0 * n / total, 1)) for name, n in counter.most_common(top)] if total else []

    project = Counter({k: v for k, v in inclusive.items() if _is_project(k)})
    return {"samples": total, "inclusive": shares(project), "self": shares(own), "file": str(path)}


def format_summary(title: str, summary: dict[str, Any], *, top: int = 15) -> str:
    lines = [f"{title}: {summary['samples']} samples ({summary['file']})", "  inclusive %:"]
    lines += [f"    {pct:5.1f}  {name}" for name, pct in summary["inclusive"][:top]]
    lines.append("  self %:")
    lines += [f"    {pct:5.1f}  {name}" for name, pct in summary["self"][:top]]
    return "\n".join(lines)
