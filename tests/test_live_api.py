"""The ASGI web tier against a real server process and real workers: sync mode (``Prefer: wait``),
event streams that hold no thread, resuming a stream, and ``/api/v1/me``.

The server runs with ``API_LIVE_RECHECK_S=30`` (conftest ``web_process``): a wait or a stream that
ends within seconds was woken by the after-commit notification, not by the periodic re-check.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import connection
from rest_framework.test import APIClient

from jobctl import AsyncClient, Client
from jobs.api.live import prefer_wait
from jobs.models import Job, JobStatus
from tests import harness
from tests.proxy import faulty_proxy

pytestmark = pytest.mark.integration

SLOW = {"steps": 200, "step_s": 0.2}


def _http(web: harness.WebServer, principal: Any, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=web.url, headers={"Authorization": f"Token {principal.token}"}, timeout=60,
                        **kwargs)


def _submit_body(job_type: str, inputs: dict[str, Any], session: str = "s-live", **extra: Any) -> dict[str, Any]:
    return {"job_type": job_type, "inputs": inputs, "session_id": session, **extra}


# --- sync mode ----------------------------------------------------------------------------------


def test_prefer_wait_on_a_quick_job_answers_200_with_the_finished_job(web: harness.WebServer, principal: Any) -> None:
    with _http(web, principal) as client:
        # when a quick job is submitted with Prefer: wait
        response = client.post("/api/v1/jobs", json=_submit_body("demo.noop", {}), headers={"Prefer": "wait=20"})
    # then the answer is the finished job, as GET shows it
    assert response.status_code == 200, response.text
    assert response.headers["Preference-Applied"] == "wait=20"
    job = response.json()
    assert job["status"] == "succeeded" and job["result"] == {"ok": True}
    assert job["job_type"] == "demo.noop" and [r["outcome"] for r in job["runs"]] == ["succeeded"]


def test_prefer_wait_on_a_slow_job_answers_the_202_handle_when_n_runs_out(web: harness.WebServer,
                                                                          principal: Any) -> None:
    with _http(web, principal) as client:
        client.get("/api/v1/me")  # an open connection: the clock below measures the request alone
        # when a slow job is submitted with Prefer: wait=2
        started = time.monotonic()
        response = client.post("/api/v1/jobs", json=_submit_body("demo.long_running", SLOW),
                               headers={"Prefer": "wait=2"})
        elapsed = time.monotonic() - started
    # then the usual 202 handle comes back once N ran out, within N + 0.5 s
    assert response.status_code == 202, response.text
    assert set(response.json()) >= {"job_id", "run_id", "status", "status_url", "stream_url"}
    assert response.headers["Preference-Applied"] == "wait=2"
    assert 1.9 <= elapsed < 2.5, elapsed
    Client(web.url, principal.token).cancel(response.json()["job_id"])


def test_wait_is_capped_by_jobs_wait_max_s(rf: Any, settings: Any) -> None:
    settings.JOBS_WAIT_MAX_S = 60
    cases = {"wait=5": 5.0, "respond-async, wait=10": 10.0, "WAIT = 7": 7.0, "wait=600": 60.0, "wait=0": None,
             "wait=soon": None, "handling=lenient": None, "": None, 'wait="3"; foo=bar': 3.0}
    for header, expected in cases.items():
        assert prefer_wait(rf.get("/", HTTP_PREFER=header)) == expected, header


def test_long_poll_get_answers_when_the_job_ends(web: harness.WebServer, principal: Any) -> None:
    with _http(web, principal) as client:
        job_id = client.post("/api/v1/jobs", json=_submit_body("demo.long_running", {"steps": 6, "step_s": 0.25}))
        job_id = job_id.json()["job_id"]
        # when GET waits for it
        started = time.monotonic()
        response = client.get(f"/api/v1/jobs/{job_id}", headers={"Prefer": "wait=25"})
        elapsed = time.monotonic() - started
    # then it answers with the finished job as soon as it ended, long before N
    assert response.status_code == 200 and response.headers["Preference-Applied"] == "wait=25"
    assert response.json()["status"] == "succeeded"
    assert elapsed < 15, elapsed


def test_a_job_waiting_for_approval_keeps_the_waiter_until_n(web: harness.WebServer, principal: Any) -> None:
    body = _submit_body("demo.noop", {}, constraints={"requires_human_ack": True})
    with _http(web, principal) as client:
        # when a job that needs a human is submitted with a wait
        started = time.monotonic()
        response = client.post("/api/v1/jobs", json=body, headers={"Prefer": "wait=2"})
        elapsed = time.monotonic() - started
        # then the wait lasts until N and answers the handle
        assert response.status_code == 202 and response.json()["status"] == "pending_approval"
        assert elapsed >= 1.9, elapsed
        # and GET with a wait answers its current state when N runs out
        job_id = response.json()["job_id"]
        polled = client.get(f"/api/v1/jobs/{job_id}", headers={"Prefer": "wait=1"})
    assert polled.status_code == 200 and polled.json()["status"] == "pending_approval"
    assert polled.json()["approval"]["status"] == "pending"


def _in_thread(target: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            box["response"] = target()
        except Exception as exc:  # reported by the test
            box["error"] = exc
        box["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_a_cancel_ends_a_submit_wait_with_the_cancelled_job(web: harness.WebServer, principal: Any) -> None:
    with _http(web, principal) as client, _http(web, principal) as other:
        # given a running job whose submit is still waiting (Prefer: wait=40)
        thread, box = _in_thread(lambda: client.post(
            "/api/v1/jobs", json=_submit_body("demo.long_running", SLOW, session="s-cancel"),
            headers={"Prefer": "wait=40"}))
        job = harness.wait_until(lambda: Job.objects.filter(session_id="s-cancel", status=JobStatus.RUNNING).first(),
                                 timeout=30, message="the job running")
        # when it is cancelled from elsewhere
        assert other.post(f"/api/v1/jobs/{job.pk}/cancel").status_code == 202
        thread.join(40)
    # then the waiting submit answers at once with the cancelled job
    assert "error" not in box, box
    response = box["response"]
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled" and response.json()["job_id"] == job.pk
    assert box["elapsed"] < 20, box["elapsed"]


def test_a_cancel_ends_a_get_wait_on_a_job_pending_approval(web: harness.WebServer, principal: Any) -> None:
    with _http(web, principal) as client, _http(web, principal) as other:
        job_id = client.post("/api/v1/jobs", json=_submit_body(
            "demo.noop", {}, constraints={"requires_human_ack": True})).json()["job_id"]
        thread, box = _in_thread(lambda: client.get(f"/api/v1/jobs/{job_id}", headers={"Prefer": "wait=40"}))
        time.sleep(1.0)
        assert other.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 202
        thread.join(40)
    assert box["response"].status_code == 200 and box["response"].json()["status"] == "cancelled"
    assert box["elapsed"] < 15, box["elapsed"]


# --- event streams --------------------------------------------------------------------------------


def test_stream_resumes_after_last_event_id(web: harness.WebServer, principal: Any) -> None:
    client = Client(web.url, principal.token)
    job = client.submit("demo.noop", {}, session="s-resume", wait=20)
    assert job["status"] == "succeeded"
    # given the whole stream of a finished job
    full = list(client.events(job["job_id"]))
    assert [e.id for e in full if e.event == "status"] == ["1", "2", "3"] and full[-1].event == "end"
    # when a client comes back after event 2
    with _http(web, principal) as http:
        text = http.get(f"/api/v1/jobs/{job['job_id']}/events", headers={"Last-Event-ID": "2"}).text
    # then only what came after is sent again
    assert "id: 1\n" not in text and "id: 2\n" not in text and "id: 3\n" in text and "event: end" in text


def test_client_stream_survives_a_dropped_connection(web: harness.WebServer, principal: Any) -> None:
    with faulty_proxy(web.port) as proxy:
        client = Client(proxy.url, principal.token, backoff=0.1)
        job = client.submit("demo.long_running", {"steps": 10, "step_s": 0.3}, session="s-drop")
        seen: list[Any] = []
        cut = False
        # when the connection is cut after the first progress event
        for event in client.events(job["job_id"]):
            seen.append(event)
            if event.event == "progress" and not cut:
                cut = proxy.cut() > 0
    # then the stream went on from where it was: every status event once, in order, then end
    assert cut and proxy.connections >= 2  # the submit's and the first stream's, then the resumed stream's
    statuses = [int(e.id) for e in seen if e.event == "status"]
    assert statuses == list(range(1, len(statuses) + 1)) and len(statuses) >= 3, statuses
    assert seen[-1].event == "end" and seen[-1].data == {"status": "succeeded"}


def _web_threads(web: harness.WebServer) -> int:
    status = Path(f"/proc/{web.proc.pid}/status").read_text()
    return int(status.split("Threads:")[1].split()[0])


def _web_db_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                       [harness.WEB_APPLICATION_NAME])
        return int(cursor.fetchone()[0])


def test_idle_streams_hold_no_thread_and_a_list_still_answers(web: harness.WebServer, principal: Any,
                                                              make_principal: Any) -> None:
    streams = 100
    other = make_principal("lister")
    # given 100 jobs waiting for a human, each with an open event stream
    with _http(web, principal) as client:
        results = client.post("/api/v1/jobs/batch", json={"jobs": [
            _submit_body("demo.noop", {"i": i}, session="s-idle", constraints={"requires_human_ack": True})
            for i in range(streams)]}).json()["results"]
    job_ids = [r["job_id"] for r in results]
    threads_before = _web_threads(web)

    async def scenario() -> dict[str, Any]:
        headers = {"Authorization": f"Token {principal.token}"}
        limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=streams + 10)
        async with httpx.AsyncClient(base_url=web.url, headers=headers, timeout=60, limits=limits) as http:
            opened = 0
            all_open = asyncio.Event()
            ended: dict[str, float] = {}

            async def follow(job_id: str) -> None:
                nonlocal opened
                async with http.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
                    assert response.status_code == 200
                    first = True
                    async for line in response.aiter_lines():
                        if first:
                            first = False
                            opened += 1
                            if opened == streams:
                                all_open.set()
                        if line.startswith("event: end"):
                            ended[job_id] = time.monotonic()
                            return

            tasks = [asyncio.create_task(follow(job_id)) for job_id in job_ids]
            await asyncio.wait_for(all_open.wait(), 60)
            await asyncio.sleep(0.5)
            # when another principal lists its jobs while they are all open
            async with httpx.AsyncClient(base_url=web.url, timeout=30,
                                         headers={"Authorization": f"Token {other.token}"}) as lister:
                listing = await lister.get("/api/v1/jobs")
            observed: dict[str, Any] = {"list": listing.status_code, "threads": _web_threads(web),
                        "db": await asyncio.to_thread(_web_db_connections),
                        "still_open": sum(1 for t in tasks if not t.done())}
            # and one of the jobs is cancelled: its stream ends on the notification
            cancelled_at = time.monotonic()
            async with httpx.AsyncClient(base_url=web.url, timeout=30, headers=headers) as canceller:
                assert (await canceller.post(f"/api/v1/jobs/{job_ids[0]}/cancel")).status_code == 202
            await asyncio.wait_for(tasks[0], 20)
            observed["ended_after"] = ended[job_ids[0]] - cancelled_at
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return observed

    observed = asyncio.run(scenario())
    # then the list answered while every stream stayed open
    assert observed["list"] == 200 and observed["still_open"] == streams, observed
    # and the streams hold neither threads nor database connections of their own
    assert observed["threads"] <= threads_before + 10, (threads_before, observed)
    assert observed["db"] <= 15, observed
    # and a stream is woken by the change, not by the 30 s re-check
    assert observed["ended_after"] < 10, observed


def test_events_of_someone_elses_job_or_without_a_token_are_json_errors(web: harness.WebServer, principal: Any,
                                                                         make_principal: Any) -> None:
    with _http(web, principal) as client:
        job_id = client.post("/api/v1/jobs", json=_submit_body("demo.noop", {})).json()["job_id"]
    stranger = make_principal("stranger")
    with httpx.Client(base_url=web.url, timeout=30) as anonymous:
        unauthenticated = anonymous.get(f"/api/v1/jobs/{job_id}/events")
        waiting = anonymous.get(f"/api/v1/jobs/{job_id}", headers={"Prefer": "wait=5"})
    with _http(web, stranger) as other:
        hidden = other.get(f"/api/v1/jobs/{job_id}/events")
        hidden_wait = other.get(f"/api/v1/jobs/{job_id}", headers={"Prefer": "wait=5"})
        bad_resume = other.get(f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "x"})
    assert unauthenticated.status_code == 401 and unauthenticated.json()["code"] == "not_authenticated"
    assert unauthenticated.headers["WWW-Authenticate"] == "Token"
    assert waiting.status_code == 401 and waiting.json()["code"] == "not_authenticated"
    assert hidden.status_code == 404 and hidden.json()["code"] == "not_found"
    assert hidden_wait.status_code == 404 and hidden_wait.json()["code"] == "not_found"
    assert bad_resume.status_code == 400 and bad_resume.json()["code"] == "invalid_type"


# --- the client and the command line ------------------------------------------------------------


def test_a_retried_submit_never_creates_a_second_job(web: harness.WebServer, principal: Any) -> None:
    with faulty_proxy(web.port) as proxy:
        # given a connection that drops the answer to the first submit (the job was created)
        proxy.drop_responses(1)
        client = Client(proxy.url, principal.token, backoff=0.05)
        # when the client submits
        job = client.submit("demo.noop", {"n": 1}, session="s-retry")
        # then it retried, and the retry answered the same job (an idempotent replay: 200)
        assert proxy.dropped == 1 and proxy.connections >= 2
        assert client.get(job["job_id"])["job_id"] == job["job_id"]
        assert Job.objects.filter(session_id="s-retry").count() == 1
        assert Job.objects.get(session_id="s-retry").pk == job["job_id"]
        # and a 503 is retried too (a fresh client: the refusal comes on new connections)
        proxy.refuse(2)
        again = Client(proxy.url, principal.token, backoff=0.05).submit("demo.noop", {"n": 2}, session="s-retry")
        assert proxy.refused == 2 and Job.objects.filter(session_id="s-retry").count() == 2
        assert again["job_id"] != job["job_id"]


def test_async_client_submits_waits_and_follows(web: harness.WebServer, principal: Any) -> None:
    async def scenario() -> tuple[dict[str, Any], list[str], Any]:
        async with AsyncClient(web.url, principal.token) as client:
            job = await client.submit("demo.long_running", {"steps": 3, "step_s": 0.2}, session="s-async", wait=20)
            events = [event.event async for event in client.events(job["job_id"])]
            tool = client.tool("demo.noop", timeout=20)
            return job, events, await tool(x=1)

    job, events, tool_result = asyncio.run(scenario())
    assert job["status"] == "succeeded" and job["result"] == {"steps_done": 3}
    assert events[-1] == "end" and events.count("status") == 3
    assert tool_result == {"ok": True}


def test_tool_returns_the_result_or_a_handle_to_poll(web: harness.WebServer, principal: Any) -> None:
    client = Client(web.url, principal.token)
    run = client.tool("demo.long_running", timeout=20)
    assert run.__name__ == "demo_long_running" and run.__doc__
    assert run(steps=2, step_s=0.1) == {"steps_done": 2}
    pending = client.tool("demo.long_running", timeout=1)(**SLOW)
    assert set(pending) == {"job_id", "status", "status_url", "note"}
    assert pending["status"] in {"queued", "running"}
    client.cancel(pending["job_id"])


def _jobctl(web: harness.WebServer, token: str, *args: str, timeout: float = 90) -> Any:
    script = Path(sys.executable).parent / "jobctl"
    return subprocess.run([str(script), "--url", web.url, "--token", token, *args], capture_output=True,
                          text=True, timeout=timeout, env=harness.child_env())


def test_cli_submit_wait_exit_status_follows_the_job(web: harness.WebServer, principal: Any,
                                                      make_principal: Any) -> None:
    # a job that succeeds: 0, with its progress drawn and its result printed
    done = _jobctl(web, principal.token, "submit", "demo.long_running", '{"steps": 3, "step_s": 0.2}', "--wait")
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout and '"steps_done": 3' in done.stdout
    assert "100.0%" in done.stderr and "step 3/3" in done.stderr
    # a job that fails: 1
    failed = _jobctl(web, principal.token, "submit", "demo.flaky", "-i", "permanent=true", "--wait", "60")
    assert failed.returncode == 1, failed.stderr
    assert "dead_lettered" in failed.stdout
    # a job that is still running when the wait runs out: 3
    slow = _jobctl(web, principal.token, "--json", "submit", "demo.long_running", "-i", "steps=200", "-i",
                   "step_s=0.2", "--wait", "1")
    assert slow.returncode == 3, slow.stderr
    Client(web.url, principal.token).cancel(json.loads(slow.stdout)["job_id"])
    # a blocked submit: 1 (the job was recorded and ended); an invalid one: 2
    limited = make_principal("limited", grants=("demo:*",))
    blocked = _jobctl(web, limited.token, "submit", "demo.http_call", "-i", "url=http://127.0.0.1:9/", "--wait")
    assert blocked.returncode == 1 and "permission_denied" in blocked.stderr
    invalid = _jobctl(web, principal.token, "submit", "no.such_type", "--wait")
    assert invalid.returncode == 2 and "unknown_job_type" in invalid.stderr
    # nobody listening: 4
    gone = _jobctl(harness.WebServer(web.proc, harness.free_port()), principal.token, "--http-timeout", "2", "me")
    assert gone.returncode == 4


def test_cli_events_and_me(web: harness.WebServer, principal: Any) -> None:
    job = Client(web.url, principal.token).submit("demo.noop", {}, session="s-cli", wait=20)
    events = _jobctl(web, principal.token, "--json", "events", job["job_id"])
    assert events.returncode == 0, events.stderr
    lines = [json.loads(line) for line in events.stdout.splitlines()]
    assert [line["event"] for line in lines][-1] == "end"
    me = _jobctl(web, principal.token, "--json", "me")
    body = json.loads(me.stdout)
    assert body["principal"] == "agent" and "s-cli" in [s["session_id"] for s in body["sessions"]]


# --- who am I --------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("staff", [False, True])
def test_me_names_the_principal_its_grants_and_sessions(make_principal: Any, staff: bool) -> None:
    principal = make_principal("me-agent", grants=("demo:*", "store:write"), staff=staff)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {principal.token}")
    for session in ("s-a", "s-a", "s-b"):
        client.post("/api/v1/jobs", {"job_type": "demo.noop", "inputs": {}, "session_id": session}, format="json")
    client.post("/api/v1/jobs", {"job_type": "demo.noop", "inputs": {}, "session_id": "s-b",
                                 "constraints": {"requires_human_ack": True}}, format="json")
    body = client.get("/api/v1/me").json()
    assert body["principal"] == "me-agent" and body["is_staff"] is staff
    assert body["grants"] == ["demo:*", "store:write"]
    sessions = {s["session_id"]: s for s in body["sessions"]}
    assert sessions["s-a"]["counts"]["queued"] == 2 and sessions["s-a"]["total"] == 2
    assert sessions["s-b"]["counts"]["pending_approval"] == 1 and sessions["s-b"]["pending_approvals"] == 1
    assert list(sessions) == ["s-b", "s-a"]  # most recently used first
    assert APIClient().get("/api/v1/me").status_code == 401


@pytest.mark.django_db
def test_openapi_documents_the_new_endpoints_and_the_prefer_header(api: APIClient) -> None:
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    paths = schema["paths"]
    for path in ("/api/v1/jobs/batch", "/api/v1/me", "/api/v1/jobs/{job_id}/events", "/api/v1/jobs"):
        assert path in paths, path
    for path, method in (("/api/v1/jobs", "post"), ("/api/v1/jobs/{job_id}", "get")):
        names = {(p["in"], p["name"]) for p in paths[path][method].get("parameters", [])}
        assert ("header", "Prefer") in names, (path, method)
    assert "text/event-stream" in paths["/api/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert "200" in paths["/api/v1/jobs"]["post"]["responses"] and "202" in paths["/api/v1/jobs"]["post"]["responses"]

