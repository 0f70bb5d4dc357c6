"""What the sync and async clients share: configuration, errors, the calls, retries, SSE parsing.

Nothing here does I/O. A :class:`Call` describes one HTTP request (and whether it may be sent
again after a failure); the clients send it and hand the response to ``Call.parse``.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

TERMINAL = frozenset({"succeeded", "dead_lettered", "cancelled", "blocked"})
# The server caps `Prefer: wait` (JOBS_WAIT_MAX_S, default 60); longer waits are several requests.
WAIT_STEP_S = 60.0
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_SESSION = "jobctl"
# Answers that mean "not now" (the server or something in front of it), worth another try.
RETRY_STATUSES = frozenset({502, 503, 504})


def is_terminal(job: dict[str, Any]) -> bool:
    return job.get("status") in TERMINAL


@dataclass
class Config:
    """Where the platform is and who is asking. ``from_env`` reads ``JOBS_URL``, ``JOBS_TOKEN``
    and ``JOBS_SESSION``; explicit arguments win."""

    url: str = DEFAULT_URL
    token: str = ""
    session: str = DEFAULT_SESSION
    timeout: float = 30.0
    retries: int = 5
    backoff: float = 0.5

    @classmethod
    def from_env(cls, *, url: str | None = None, token: str | None = None, session: str | None = None,
                 **kwargs: Any) -> Config:
        return cls(
            url=(url or os.environ.get("JOBS_URL") or DEFAULT_URL).rstrip("/"),
            token=token or os.environ.get("JOBS_TOKEN") or "",
            session=session or os.environ.get("JOBS_SESSION") or DEFAULT_SESSION,
            **kwargs,
        )

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "jobctl"}
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        return headers

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds before retry ``attempt`` (1, 2, …): ``Retry-After`` if the server said, else
        exponential backoff with jitter, at most 30 s."""
        if response is not None:
            try:
                return min(30.0, max(0.0, float(response.headers.get("Retry-After", ""))))
            except ValueError:
                pass
        return float(min(30.0, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.75, 1.25))


class ApiError(Exception):
    """An answer the platform gave that is not a success: its HTTP status, stable ``code``,
    ``detail`` and the whole body (a blocked submit's body carries ``job_id`` and ``reason``)."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body if isinstance(body, dict) else {"detail": body}
        self.code = str(self.body.get("code") or f"http_{status}")
        self.detail = str(self.body.get("detail") or self.body.get("reason") or "")
        super().__init__(f"{status} {self.code}: {self.detail}")

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text[:500]
        return cls(response.status_code, body)


class JobFailed(Exception):
    """A job ended without succeeding (dead-lettered, cancelled or blocked); ``job`` is its body."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        reason = job.get("error") or job.get("reason") or ""
        super().__init__(f"job {job.get('job_id')} {job.get('status')}" + (f": {reason}" if reason else ""))


class Unavailable(Exception):
    """The event stream answered 502/503/504: try again."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"{response.status_code} from the event stream")


def _json_body(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise ApiError.from_response(response)
    return response.json()


@dataclass
class Call:
    """One request. ``replayable``: the request may be sent again after any failure (reads, and
    submits carrying an idempotency key); otherwise only when it cannot have reached the
    platform (connection refused) or the platform said 503."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    replayable: bool = True
    timeout: float | None = None
    parse: Callable[[httpx.Response], Any] = _json_body

    def may_retry(self, *, error: Exception | None = None, response: httpx.Response | None = None) -> bool:
        if response is not None:
            return response.status_code == 503 or (self.replayable and response.status_code in RETRY_STATUSES)
        if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
            return True
        return self.replayable and isinstance(error, httpx.TransportError)


def prefer(wait: float | None) -> dict[str, str]:
    return {"Prefer": f"wait={max(0.0, min(wait, WAIT_STEP_S)):g}"} if wait else {}


def idempotency_key() -> str:
    return f"jobctl-{uuid.uuid4()}"


# --- the calls --------------------------------------------------------------------------------


def submit_call(config: Config, job_type: str, inputs: dict[str, Any] | None, *, session: str | None,
                wait: float | None, idempotency_key: str, **fields: Any) -> Call:
    body = {"job_type": job_type, "inputs": inputs or {}, "session_id": session or config.session,
            "idempotency_key": idempotency_key}
    body.update({k: v for k, v in fields.items() if v is not None})
    # The key makes a resent submit answer the first one's job: safe to retry on any failure.
    return Call("POST", "/api/v1/jobs", json=body, headers=prefer(wait), timeout=_timeout(config, wait),
                parse=_submit_parse)


def _submit_parse(response: httpx.Response) -> dict[str, Any]:
    if response.status_code in (200, 202):
        body: dict[str, Any] = response.json()
        return body
    raise ApiError.from_response(response)


def batch_call(config: Config, jobs: list[dict[str, Any]]) -> Call:
    items = []
    for job in jobs:
        item = dict(job)
        item.setdefault("session_id", config.session)
        item.setdefault("inputs", {})
        item.setdefault("idempotency_key", idempotency_key())
        items.append(item)
    return Call("POST", "/api/v1/jobs/batch", json={"jobs": items}, timeout=max(config.timeout, 120.0),
                parse=lambda r: _json_body(r)["results"])


def get_call(config: Config, job_id: str, *, wait: float | None = None) -> Call:
    return Call("GET", f"/api/v1/jobs/{job_id}", headers=prefer(wait), timeout=_timeout(config, wait))


def list_call(session: str | None = None, status: str | None = None, limit: int = 50, offset: int = 0) -> Call:
    params = {k: v for k, v in {"session_id": session, "status": status, "limit": limit, "offset": offset}.items()
              if v is not None}
    return Call("GET", "/api/v1/jobs", params=params)


def cancel_call(job_id: str) -> Call:
    return Call("POST", f"/api/v1/jobs/{job_id}/cancel", replayable=False)


def cancel_session_call(session: str, *, status: list[str] | None = None, job_type: str | None = None) -> Call:
    body: dict[str, Any] = {"session_id": session}
    if status:
        body["status"] = status
    if job_type:
        body["job_type"] = job_type
    # Cancelling a session twice cancels nothing more: safe to resend.
    return Call("POST", "/api/v1/jobs/cancel", json=body)


def approvals_call(status: str | None = "pending", limit: int = 50, offset: int = 0) -> Call:
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if status:
        params["status"] = status
    return Call("GET", "/api/v1/approvals", params=params)


def decide_call(approval_id: str, verdict: str, *, comment: str = "", inputs: dict[str, Any] | None = None) -> Call:
    body: dict[str, Any] = {"comment": comment}
    if inputs is not None:
        body["inputs"] = inputs
    return Call("POST", f"/api/v1/approvals/{approval_id}/{verdict}", json=body, replayable=False)


def replay_call(job_id: str) -> Call:
    return Call("POST", f"/api/v1/jobs/{job_id}/replay", replayable=False)


def me_call() -> Call:
    return Call("GET", "/api/v1/me")


def _timeout(config: Config, wait: float | None) -> float:
    return config.timeout + (min(wait, WAIT_STEP_S) if wait else 0.0)


def tool_answer(job: dict[str, Any], timeout: float) -> Any:
    """What a tool call returns: the result of a job that succeeded, a "poll later" note for one
    still going; a job that failed raises :class:`JobFailed`."""
    if job.get("status") == "succeeded":
        return job.get("result")
    if is_terminal(job):
        raise JobFailed(job)
    return {"job_id": job["job_id"], "status": job.get("status"), "status_url": job.get("status_url"),
            "note": f"not finished after {timeout:g}s; ask for its status later"}


def tool_name(job_type: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in job_type)


# --- Server-Sent Events -------------------------------------------------------------------------


@dataclass
class Event:
    """One event of a job's stream: ``status`` (``id`` is the stamp seq), ``progress``, ``end``,
    ``timeout``. ``data`` is the decoded JSON payload."""

    event: str
    data: Any
    id: str | None = None


class SseParser:
    """Turns stream lines into :class:`Event` (the text/event-stream format: ``field: value``
    lines, a blank line ends an event, ``:`` lines are comments)."""

    def __init__(self) -> None:
        self.retry_s: float | None = None
        self._event = "message"
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> Iterator[Event]:
        line = line.rstrip("\r\n")
        if not line:
            if self._data:
                raw = "\n".join(self._data)
                try:
                    data: Any = json.loads(raw)
                except ValueError:
                    data = raw
                yield Event(self._event, data, self._id)
            self._event, self._data, self._id = "message", [], None
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_s = int(value) / 1000.0
