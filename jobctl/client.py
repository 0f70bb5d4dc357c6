"""The Python client of the job platform's REST API (synchronous; ``jobctl.aio`` is the asyncio twin).

    from jobctl import Client

    jobs = Client()                                   # JOBS_URL, JOBS_TOKEN (and JOBS_SESSION)
    job = jobs.submit("demo.noop", {}, wait=30)       # the finished job, or its handle after 30 s
    for event in jobs.events(job["job_id"]):          # follows the stream, resumes after a drop
        print(event.event, event.data)

Every submit carries an idempotency key (generated unless given), so a submit resent after a
dropped connection or a 503 answers the first attempt's job instead of creating a second one.
Reads are retried the same way; other writes only when they cannot have taken effect.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from jobctl import _core
from jobctl._core import ApiError, Call, Config, Event, JobFailed, SseParser, Unavailable, is_terminal


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, *, session: str | None = None,
                 config: Config | None = None, transport: httpx.BaseTransport | None = None, **options: Any) -> None:
        self.config = config or Config.from_env(url=url, token=token, session=session, **options)
        self._http = httpx.Client(base_url=self.config.url, headers=self.config.headers(),
                                  timeout=self.config.timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- sending, with retries ------------------------------------------------------------------
    def _run(self, call: Call) -> Any:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(call.method, call.path, json=call.json, params=call.params,
                                              headers=call.headers, timeout=call.timeout or self.config.timeout)
            except httpx.TransportError as exc:
                if attempt > self.config.retries or not call.may_retry(error=exc):
                    raise
                time.sleep(self.config.delay(attempt))
                continue
            if attempt <= self.config.retries and call.may_retry(response=response):
                time.sleep(self.config.delay(attempt, response))
                continue
            return call.parse(response)

    # --- jobs -----------------------------------------------------------------------------------
    def submit(self, job_type: str, inputs: dict[str, Any] | None = None, *, session: str | None = None,
               wait: float | None = None, idempotency_key: str | None = None, **fields: Any) -> dict[str, Any]:
        """Submit one job; answer its handle (``job_id``, ``status``, ``status_url``, …).

        With ``wait`` (seconds): answer the finished job as ``get`` shows it once it has ended,
        or its handle if ``wait`` ran out first. ``fields``: ``priority``, ``run_after``,
        ``constraints``, ``trace_id``, ``correlation_id``, ``conversation_id``, ``callback_url``.
        A blocked or refused submit raises :class:`ApiError` (``code``, ``body``).
        """
        started = time.monotonic()
        call = _core.submit_call(self.config, job_type, inputs, session=session, wait=wait,
                                 idempotency_key=idempotency_key or _core.idempotency_key(), **fields)
        job: dict[str, Any] = self._run(call)
        if wait and not is_terminal(job):
            remaining = wait - (time.monotonic() - started)
            if remaining > 0:
                waited = self.wait(job["job_id"], timeout=remaining)
                if is_terminal(waited):
                    return waited
        return job

    def batch(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Submit many jobs in one call (each a submit body; ``session_id`` defaults to the
        client's session, ``idempotency_key`` to a fresh one); answer one result per job."""
        results: list[dict[str, Any]] = self._run(_core.batch_call(self.config, jobs))
        return results

    def get(self, job_id: str, *, wait: float | None = None) -> dict[str, Any]:
        """The job; with ``wait``, once it has ended or ``wait`` seconds passed."""
        job: dict[str, Any] = self._run(_core.get_call(self.config, job_id, wait=wait))
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the job has ended (or ``timeout`` seconds passed; None: no limit) and
        answer it as ``get`` shows it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = _core.WAIT_STEP_S if deadline is None else min(_core.WAIT_STEP_S, deadline - time.monotonic())
            job = self.get(job_id, wait=max(step, 0.0) or None)
            if is_terminal(job) or (deadline is not None and time.monotonic() >= deadline):
                return job

    def list_jobs(self, *, session: str | None = None, status: str | None = None,
                  limit: int = 50) -> list[dict[str, Any]]:
        page: dict[str, Any] = self._run(_core.list_call(session, status, limit))
        results: list[dict[str, Any]] = page["results"]
        return results

    def events(self, job_id: str, *, last_event_id: str | int | None = None) -> Iterator[Event]:
        """Follow the job's event stream until its ``end`` event.

        A dropped connection (or the server's stream time limit) is resumed with
        ``Last-Event-ID``, so no status event is lost or repeated; progress events may repeat.
        """
        last = None if last_event_id is None else str(last_event_id)
        failures = 0
        retry_s: float | None = None
        while True:
            headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last} if last else {})}
            try:
                # No overall read limit; the server sends a comment at least every 15 s, so a
                # silent minute means the connection is dead.
                timeout = httpx.Timeout(self.config.timeout, read=60.0)
                with self._http.stream("GET", f"/api/v1/jobs/{job_id}/events", headers=headers,
                                       timeout=timeout) as response:
                    if response.status_code in _core.RETRY_STATUSES:
                        raise Unavailable(response)
                    if response.status_code != 200:
                        response.read()
                        raise ApiError.from_response(response)
                    failures = 0
                    parser = SseParser()
                    for line in response.iter_lines():
                        for event in parser.feed(line):
                            if event.id:
                                last = event.id
                            yield event
                            if event.event == "end":
                                return
                    retry_s = parser.retry_s
            except (httpx.TransportError, Unavailable):
                failures += 1
                if failures > self.config.retries:
                    raise
                time.sleep(self.config.delay(failures))
                continue
            time.sleep(retry_s or 0.0)

    def cancel(self, job_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self._run(_core.cancel_call(job_id))
        return body

    def cancel_session(self, session: str, *, status: list[str] | None = None,
                       job_type: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = self._run(_core.cancel_session_call(session, status=status, job_type=job_type))
        return body

    def replay(self, job_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self._run(_core.replay_call(job_id))
        return body

    # --- approvals ------------------------------------------------------------------------------
    def approvals(self, status: str | None = "pending") -> list[dict[str, Any]]:
        """Approval requests this principal may see (all pages)."""
        out: list[dict[str, Any]] = []
        while True:
            page = self._run(_core.approvals_call(status, offset=len(out)))
            out += page["results"]
            if not page.get("next") or not page["results"]:
                return out

    def approve(self, approval_id: str, *, comment: str = "",
                inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        call = _core.decide_call(approval_id, "approve", comment=comment, inputs=inputs)
        body: dict[str, Any] = self._run(call)
        return body

    def deny(self, approval_id: str, *, comment: str = "") -> dict[str, Any]:
        body: dict[str, Any] = self._run(_core.decide_call(approval_id, "deny", comment=comment))
        return body

    def me(self) -> dict[str, Any]:
        body: dict[str, Any] = self._run(_core.me_call())
        return body

    # --- an agent's tool --------------------------------------------------------------------------
    def tool(self, job_type: str, *, timeout: float = 30.0, session: str | None = None,
             description: str | None = None) -> Callable[..., Any]:
        """A plain function an agent framework can register as a tool: ``tool(**inputs)`` submits
        a ``job_type`` job, waits up to ``timeout`` seconds and returns its result; a job still
        going returns ``{"job_id", "status", "status_url", "note"}`` to poll later; a job that
        failed raises :class:`JobFailed`."""

        def run(**inputs: Any) -> Any:
            job = self.submit(job_type, inputs, session=session, wait=timeout)
            if not is_terminal(job):  # the handle names the status at submit; say where it is now
                job = {**job, "status": (self.get(job["job_id"]))["status"]}
            return _core.tool_answer(job, timeout)

        run.__name__ = run.__qualname__ = _core.tool_name(job_type)
        run.__doc__ = description or f"Run the governed job {job_type!r} with these inputs and return its result."
        return run


__all__ = ["ApiError", "Client", "Config", "Event", "JobFailed", "is_terminal"]
