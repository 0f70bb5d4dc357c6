"""The supervisor's restart policy, with real child processes (no Django, no broker)."""

from __future__ import annotations

import io
import sys
import threading
import time
from pathlib import Path

from common.supervisor import ChildSpec, RestartPolicy, Supervisor, exit_reason


def _supervisor(specs: list[ChildSpec], out: io.StringIO, policy: RestartPolicy) -> Supervisor:
    return Supervisor(specs=specs, cwd=Path.cwd(), base_env={}, ready_urls=[], on_ready=lambda _: None,
                      out=out, stop_timeout=5, restart=policy)


def test_exit_reason_names_the_code_or_the_signal() -> None:
    assert exit_reason(3) == "exited with code 3"
    assert exit_reason(-9) == "was killed by SIGKILL"
    assert exit_reason(0) == "exited with code 0"


def test_backoff_doubles_up_to_its_maximum() -> None:
    policy = RestartPolicy(backoff_initial_s=0.5, backoff_max_s=3)
    assert [policy.backoff(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_child_that_keeps_exiting_stops_the_platform_and_says_which_and_why() -> None:
    # given: a child that always exits with code 3, and a steady one
    out = io.StringIO()
    steady = ChildSpec("steady", [sys.executable, "-c", "import time; time.sleep(60)"])
    failing = ChildSpec("failing", [sys.executable, "-c", "import sys; sys.exit(3)"])
    supervisor = _supervisor([steady, failing], out, RestartPolicy(burst=3, interval_s=60, backoff_initial_s=0.05))

    # when
    started = time.monotonic()
    code = supervisor.run()

    # then: it was restarted twice with backoff, the third exit stopped everything with code 1
    log = out.getvalue()
    assert code == 1, log
    assert log.count("platform: started failing pid") == 3, log
    assert "failing (pid" in log and "exited with code 3; restarting in 0.1s (exit 2 of 3" in log, log
    assert "exited 3 times in 60s (limit 3): giving up, stopping the platform" in log, log
    assert log.count("platform: started steady pid") == 1, log
    assert all(not c.running() for c in supervisor.children)
    assert time.monotonic() - started < 20


def test_a_child_is_restarted_after_it_exits_and_the_count_ages_out(tmp_path: Path) -> None:
    # given: a child that exits once (a marker file remembers it), then stays up
    marker = tmp_path / "ran"
    script = (f"import pathlib, sys, time\np = pathlib.Path({str(marker)!r})\n"
              "if not p.exists():\n    p.write_text('1'); sys.exit(7)\ntime.sleep(60)\n")
    out = io.StringIO()
    spec = ChildSpec("once", [sys.executable, "-c", script])
    supervisor = _supervisor([spec], out, RestartPolicy(burst=2, interval_s=60, backoff_initial_s=0.05))

    # when: the loop runs (in this thread: run() installs signal handlers) until the child was
    # restarted, then a stop is requested
    def stop_later() -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and out.getvalue().count("started once pid") < 2:
            time.sleep(0.05)
        time.sleep(0.5)
        supervisor._stop_signal = 15

    thread = threading.Thread(target=stop_later)
    thread.start()
    code = supervisor._loop(time.monotonic())
    thread.join()
    supervisor.stop_all()

    # then: one exit logged with its code, one restart, no give-up
    log = out.getvalue()
    assert code == 0, log
    assert "once (pid" in log and "exited with code 7; restarting in 0.1s (exit 1 of 2 allowed in 60s)" in log, log
    assert log.count("started once pid") == 2, log
    assert "giving up" not in log


def test_a_child_gets_the_base_environment_less_what_it_unsets(tmp_path: Path) -> None:
    out = io.StringIO()
    probe = tmp_path / "env.txt"
    script = (f"import os, pathlib; pathlib.Path({str(probe)!r}).write_text("
              "repr((os.environ.get('KEEP'), 'DROP' in os.environ, os.environ.get('OWN'))))")
    spec = ChildSpec("probe", [sys.executable, "-c", script], env={"OWN": "3"}, unset_env=("DROP",))
    supervisor = Supervisor(specs=[spec], cwd=Path.cwd(), base_env={"KEEP": "1", "DROP": "2"}, ready_urls=[],
                            on_ready=lambda _: None, out=out, stop_timeout=5,
                            restart=RestartPolicy(burst=1))
    assert supervisor.run() == 1  # the probe exits at once; with burst 1 that ends the run
    assert probe.read_text() == "('1', False, '3')"
