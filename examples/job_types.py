"""Demo job types: a no-op, a long-running one with progress and cooperative cancel, a
two-stage write to the local store (execute drafts, commit writes, rollback undoes), an HTTP
call, and a deliberately flaky one for the retry path."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from examples.models import ExternalRecord
from jobs.errors import PermanentError, TransientError
from jobs.registry import AckPoint, JobType, RetryPolicy, Risk, register
from jobs.worker.context import JobContext


@register
class Noop(JobType):
    """Do nothing and succeed; the platform's overhead, measured by the benchmark."""

    name = "demo.noop"
    scope = "demo"
    permissions = ("demo:run",)
    max_runtime_s = 30
    input_schema = {"type": "object", "additionalProperties": True}

    def execute(self, ctx: JobContext, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}


@register
class LongRunning(JobType):
    """Count through ``steps`` steps of ``step_s`` seconds, reporting progress; stops when cancelled."""

    name = "demo.long_running"
    scope = "demo"
    permissions = ("demo:run",)
    max_runtime_s = 600
    input_schema = {
        "type": "object",
        "properties": {
            "steps": {"type": "integer", "minimum": 1, "maximum": 10000},
            "step_s": {"type": "number", "minimum": 0, "maximum": 60},
        },
        "required": ["steps"],
        "additionalProperties": False,
    }

    def execute(self, ctx: JobContext, inputs: dict[str, Any]) -> dict[str, Any]:
        steps = int(inputs["steps"])
        step_s = float(inputs.get("step_s", 0.1))
        for i in range(steps):
            ctx.check_cancelled()
            time.sleep(step_s)
            ctx.progress(100.0 * (i + 1) / steps, f"step {i + 1}/{steps}")
        return {"steps_done": steps}


@register
class LocalStoreWrite(JobType):
    """Write a record to the local store: execute drafts the change, commit writes it."""

    name = "demo.local_store_write"
    scope = "store"
    permissions = ("store:write",)
    risk = Risk.LOW
    max_runtime_s = 60
    input_schema = {
        "type": "object",
        "properties": {
            "key": {"type": "string", "minLength": 1, "maxLength": 200},
            "data": {"type": "object"},
            "api_token": {"type": "string"},
            "execute_sleep_s": {"type": "number", "minimum": 0, "maximum": 30},
            "commit_sleep_s": {"type": "number", "minimum": 0, "maximum": 30},
            "fail_commit_times": {"type": "integer", "minimum": 0, "maximum": 10},
        },
        "required": ["key", "data"],
        "additionalProperties": False,
    }
    secret_fields = ("api_token",)

    def execute(self, ctx: JobContext, inputs: dict[str, Any]) -> dict[str, Any]:
        if inputs.get("execute_sleep_s"):
            time.sleep(float(inputs["execute_sleep_s"]))
        existing = ExternalRecord.objects.filter(key=inputs["key"]).count()
        ctx.record_tool_call("store.lookup", {"key": inputs["key"]}, {"existing": existing})
        return {
            "key": inputs["key"],
            "data": inputs["data"],
            "existing_records": existing,
            "token_seen": bool(inputs.get("api_token")),
            "commit_sleep_s": inputs.get("commit_sleep_s", 0),
            "fail_commit_times": inputs.get("fail_commit_times", 0),
        }

    def commit(self, ctx: JobContext, proposal: dict[str, Any]) -> dict[str, Any]:
        if ctx.attempt <= int(proposal.get("fail_commit_times", 0)):
            raise TransientError(f"store unavailable (simulated, attempt {ctx.attempt})")
        if proposal.get("commit_sleep_s"):
            time.sleep(float(proposal["commit_sleep_s"]))
        record = ExternalRecord.objects.create(key=proposal["key"], data=proposal["data"],
                                               written_by_job=ctx.job_id)
        ctx.record_tool_call("store.write", {"key": proposal["key"]}, {"record_id": record.pk})
        return {"record_id": record.pk, "key": record.key}

    def describe(self, proposal: dict[str, Any] | None) -> dict[str, Any]:
        proposal = proposal or {}
        return {
            "summary": f"Write record {proposal.get('key')!r} to the local store",
            "evidence": [f"{proposal.get('existing_records', 0)} record(s) with this key exist"],
            "impact": f"creates one record with {len(proposal.get('data') or {})} field(s)",
            "rollback": "delete the created record (rollback handler)",
        }

    def rollback(self, ctx: JobContext, committed: dict[str, Any]) -> dict[str, Any]:
        deleted, _ = ExternalRecord.objects.filter(pk=int(committed.get("record_id") or 0)).delete()
        return {"deleted": deleted}


@register
class ReviewedStoreWrite(LocalStoreWrite):
    """Draft a change to the local store and write it only after a human approved it."""

    name = "demo.reviewed_store_write"
    risk = Risk.HIGH
    ack = AckPoint.BEFORE_COMMIT


@register
class HttpCall(JobType):
    """GET a URL and return its status and JSON body (5xx/429/connection errors retry)."""

    name = "demo.http_call"
    scope = "net"
    permissions = ("net:call",)
    max_runtime_s = 30
    retry = RetryPolicy(max_attempts=4, backoff_base_s=1.0)
    input_schema = {
        "type": "object",
        "properties": {
            "url": {"type": "string", "pattern": "^https?://"},
            "timeout_s": {"type": "number", "minimum": 0.1, "maximum": 25},
        },
        "required": ["url"],
        "additionalProperties": False,
    }

    def execute(self, ctx: JobContext, inputs: dict[str, Any]) -> dict[str, Any]:
        with urllib.request.urlopen(inputs["url"], timeout=float(inputs.get("timeout_s", 10))) as resp:
            raw = resp.read(1024 * 1024)
            status = resp.status
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw[:2000].decode("utf-8", "replace")
        ctx.record_tool_call("http.get", {"url": inputs["url"]}, {"status": status})
        return {"status": status, "body": body}


@register
class Flaky(JobType):
    """Fail transiently ``fail_times`` times, then succeed; or fail permanently if asked."""

    name = "demo.flaky"
    scope = "demo"
    permissions = ("demo:run",)
    max_runtime_s = 30
    retry = RetryPolicy(max_attempts=3, backoff_base_s=0.2, backoff_max_s=2.0)
    input_schema = {
        "type": "object",
        "properties": {
            "fail_times": {"type": "integer", "minimum": 0, "maximum": 10},
            "permanent": {"type": "boolean"},
            "sleep_s": {"type": "number", "minimum": 0, "maximum": 120},
        },
        "additionalProperties": False,
    }

    def execute(self, ctx: JobContext, inputs: dict[str, Any]) -> dict[str, Any]:
        if inputs.get("sleep_s"):
            deadline = time.monotonic() + float(inputs["sleep_s"])
            while time.monotonic() < deadline:
                time.sleep(0.05)
        if inputs.get("permanent"):
            raise PermanentError("asked to fail permanently")
        if ctx.attempt <= int(inputs.get("fail_times", 0)):
            raise TransientError(f"simulated transient failure on attempt {ctx.attempt}")
        return {"attempt": ctx.attempt}


@register
class Stubborn(JobType):
    """Sleep ``sleep_s`` seconds without ever looking at cancellation: only a forced cancel stops it."""

    name = "demo.stubborn"
    scope = "demo"
    permissions = ("demo:run",)
    max_runtime_s = 300
    input_schema = {
        "type": "object",
        "properties": {"sleep_s": {"type": "number", "minimum": 0, "maximum": 300}},
        "additionalProperties": False,
    }

    def execute(self, ctx: JobContext, inputs: dict[str, Any]) -> dict[str, Any]:
        time.sleep(float(inputs.get("sleep_s", 30)))
        return {"slept_s": inputs.get("sleep_s", 30)}
