"""Async chat jobs against the real server and a real SQLite file: lifecycle, cancel, ownership,
crash recovery, expiry, refusal of a bad database, and fuzzed bodies."""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import signal
import sqlite3
import string
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iir.api.jobs.serving import Jobs
from iir.backends.echo import EchoBackend
from iir.backends.registry import ModelRegistry
from iir.policy.scrub import Scrubber
from iir.service.jobs import JobPool
from iir.service.pipeline import Pipeline
from iir.store.jobs import (
    JobStore,
    cancel_job_offline,
    claim_job,
    finish_job,
    get_job,
    insert_job,
    list_jobs,
    purge_jobs,
    show_job,
)
from iir.store.sqlite import MIGRATIONS, SCHEMA_VERSION, check_database

from . import harness
from .harness import IIR, Server, free_port
from .schemas import validate, validate_error
from .test_fuzz import chat_body, json_values

ASYNC = "/v1/async/chat/completions"
SECOND = "second-key-0123456789abcdef0123456789abcdef"
JOB_ID = re.compile(r"job_[0-9a-f]{32}")


def chat(text: str = "hello jobs", **kw: Any) -> dict[str, Any]:
    return {"model": "iir/echo", "messages": [{"role": "user", "content": text}], **kw}


def submit(c: httpx.Client, body: Any, key: str) -> str:
    r = c.post(ASYNC, json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["status"] == "pending" and JOB_ID.fullmatch(out["job_id"])
    assert set(out) == {"job_id", "status"}
    assert r.headers["location"] == f"{ASYNC}/{out['job_id']}"
    return out["job_id"]


def poll(c: httpx.Client, job_id: str, key: str) -> httpx.Response:
    return c.get(f"{ASYNC}/{job_id}", headers={"Authorization": f"Bearer {key}"})


def wait_status(
    c: httpx.Client, job_id: str, key: str, statuses: tuple[str, ...], timeout: float = 60
) -> httpx.Response:
    """Polls until the job reaches one of ``statuses`` (a generous deadline, not a timing check)."""
    deadline = time.monotonic() + timeout
    while True:
        r = poll(c, job_id, key)
        assert r.status_code == 200, r.text
        status = r.headers["x-iir-job-status"]
        if status in statuses:
            return r
        assert time.monotonic() < deadline, f"job {job_id} stuck in {status}"
        time.sleep(0.02)


def metric(srv: Server, line_start: str) -> float:
    text = httpx.get(srv.url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in /metrics")


def validate_ours(srv: Server, body: Any, name: str) -> None:
    """Against IIR's own OpenAPI document (job status bodies have no OpenAI schema)."""
    doc = httpx.get(srv.url + "/openapi.json").json()
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    with Server(env={"IIR_ALLOWED_KEYS": SECOND}) as s:
        yield s


# --- lifecycle -----------------------------------------------------------------------------------


def test_submit_poll_succeed(srv: Server) -> None:
    with srv.client() as c:
        job_id = submit(c, chat("the quick brown fox", max_tokens=50), srv.key)
        validate_ours(srv, {"job_id": job_id, "status": "pending"}, "JobStatus")
        r = wait_status(c, job_id, srv.key, ("succeeded", "failed"))
        assert r.headers["x-iir-job-status"] == "succeeded"
        body = r.json()
        validate(body, "CreateChatCompletionResponse")
        assert body["choices"][0]["message"]["content"] == "the quick brown fox"
        assert body["model"] == "iir/echo" and body["usage"]["completion_tokens"] > 0
        # Polling again gives the same stored result.
        assert poll(c, job_id, srv.key).json() == body
    assert metric(srv, 'iir_jobs{status="succeeded"}') >= 1
    assert metric(srv, 'iir_job_duration_seconds_count{status="succeeded"}') >= 1


def test_unknown_model_is_refused_at_submission(srv: Server) -> None:
    with srv.client() as c:
        r = c.post(ASYNC, json={**chat(), "model": "nope/missing"}, headers=srv.auth)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "model_not_found"
        assert "nope/missing" in r.json()["error"]["message"]


def test_run_time_failure_is_stored_with_the_usual_error_shape() -> None:
    # A configured provider that is down when the job runs: accepted, then failed with a 502.
    env = {
        "OPENAI_API_KEY": "sk-test-" + "x" * 40,
        "IIR_OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        "IIR_ALLOW_INSECURE_UPSTREAM": "true",
        "IIR_UPSTREAM_RETRIES": "0",
    }
    with Server(env=env) as s, s.client() as c:
        job_id = submit(c, {**chat(), "model": "openai/gpt-4o-mini"}, s.key)
        r = wait_status(c, job_id, s.key, ("succeeded", "failed"))
        body = r.json()
        assert r.headers["x-iir-job-status"] == "failed"
        assert set(body) == {"job_id", "status", "error"}
        assert body["job_id"] == job_id and body["status"] == "failed"
        validate(body["error"], "Error")
        validate_ours(s, body, "JobStatus")
        assert body["error"]["type"] == "upstream_error", body


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(stream=True), "stream"),
        ({"model": "iir/echo"}, "messages"),
        ({"model": "iir/echo", "messages": []}, "messages"),
        (chat(temperature=9), "temperature"),
        ([1, 2], "body"),
    ],
)
def test_bad_submissions_are_400_naming_the_field(srv: Server, body: Any, param: str) -> None:
    with srv.client() as c:
        r = c.post(ASYNC, json=body, headers=srv.auth)
    assert r.status_code == 400, r.text
    validate_error(r.json())
    assert r.json()["error"]["param"] == param


def test_malformed_json_and_no_auth(srv: Server) -> None:
    with srv.client() as c:
        r = c.post(ASYNC, content=b"{nope", headers=srv.auth)
        assert r.status_code == 400 and r.json()["error"]["param"] == "body"
        r = c.post(ASYNC, json=chat())
        assert r.status_code == 401
        r = c.get(f"{ASYNC}/job_{'0' * 32}")
        assert r.status_code == 401


# --- ownership -----------------------------------------------------------------------------------


def test_a_job_is_visible_only_to_its_key(srv: Server) -> None:
    with srv.client() as c:
        job_id = submit(c, chat("mine"), srv.key)
        wait_status(c, job_id, srv.key, ("succeeded",))
        other = poll(c, job_id, SECOND)
        missing_id = "job_" + "a" * 32
        missing = poll(c, missing_id, SECOND)
        assert other.status_code == missing.status_code == 404
        validate_error(other.json())
        # Exactly the answer for an id that does not exist, apart from the id itself.
        assert other.text.replace(job_id, "X") == missing.text.replace(missing_id, "X")
        d = c.delete(f"{ASYNC}/{job_id}", headers={"Authorization": f"Bearer {SECOND}"})
        assert d.status_code == 404
        assert poll(c, job_id, srv.key).headers["x-iir-job-status"] == "succeeded"
        # The second key's own jobs work.
        theirs = submit(c, chat("theirs"), SECOND)
        assert wait_status(c, theirs, SECOND, ("succeeded",)).status_code == 200
        assert poll(c, theirs, srv.key).status_code == 404


@pytest.mark.parametrize(
    "job_id", ["nope", "job_123", "job_" + "g" * 32, "JOB_" + "a" * 32, "job_" + "a" * 33, "%00"]
)
def test_malformed_ids_are_404(srv: Server, job_id: str) -> None:
    with srv.client() as c:
        for r in (poll(c, job_id, srv.key), c.delete(f"{ASYNC}/{job_id}", headers=srv.auth)):
            assert r.status_code == 404, r.text
            validate_error(r.json())


def test_long_poll_answers_when_the_job_ends(srv: Server) -> None:
    with srv.client() as c:
        job_id = submit(c, chat("wait for me"), srv.key)
        r = c.get(f"{ASYNC}/{job_id}?wait=30", headers=srv.auth)
        assert r.status_code == 200 and r.headers["x-iir-job-status"] == "succeeded"
        validate(r.json(), "CreateChatCompletionResponse")
        for bad in ("x", "-1", "61", "nan"):
            r = c.get(f"{ASYNC}/{job_id}?wait={bad}", headers=srv.auth)
            assert r.status_code == 400 and r.json()["error"]["param"] == "wait", bad
        r = c.get(f"{ASYNC}/job_{'b' * 32}?wait=1", headers=srv.auth)
        assert r.status_code == 404


def test_cancel_of_a_finished_job_is_409(srv: Server) -> None:
    with srv.client() as c:
        job_id = submit(c, chat(), srv.key)
        wait_status(c, job_id, srv.key, ("succeeded",))
        r = c.delete(f"{ASYNC}/{job_id}", headers=srv.auth)
        assert r.status_code == 409
        validate_error(r.json())
        assert "already succeeded" in r.json()["error"]["message"]


def test_openapi_documents_the_job_routes(srv: Server) -> None:
    doc = httpx.get(srv.url + "/openapi.json").json()
    ops = doc["paths"][ASYNC + "/{job_id}"]
    assert {"get", "delete"} <= set(ops)
    assert "202" in doc["paths"][ASYNC]["post"]["responses"]
    assert "InferRequest" in doc["components"]["schemas"]


# --- cancel ---------------------------------------------------------------------------------------


def test_cancel_pending_and_running_jobs() -> None:
    # One worker and a slow echo (20 s for this text) so the first job is running while the
    # second waits.
    slow = " ".join(["word"] * 100)
    env = {"IIR_JOB_CONCURRENCY": "1", "IIR_ECHO_TOKEN_DELAY_MS": "200"}
    with Server(env=env) as s, s.client() as c:
        running = submit(c, chat(slow), s.key)
        wait_status(c, running, s.key, ("running",))
        pending = submit(c, chat(slow), s.key)
        assert poll(c, pending, s.key).json() == {"job_id": pending, "status": "pending"}

        # A long-poll on the pending job is woken by its cancel.
        with ThreadPoolExecutor(1) as pool:
            waiter = pool.submit(
                lambda: s.client().get(f"{ASYNC}/{pending}?wait=50", headers=s.auth)
            )
            time.sleep(0.5)  # let the long-poll reach the server first
            r = c.delete(f"{ASYNC}/{pending}", headers=s.auth)
            assert r.status_code == 200
            assert r.json() == {"job_id": pending, "status": "cancelled"}
            # Well before the 50 s the poll would otherwise hold.
            assert waiter.result(40).json() == {"job_id": pending, "status": "cancelled"}
        assert poll(c, pending, s.key).json() == {"job_id": pending, "status": "cancelled"}
        # Cancelling twice is harmless.
        assert c.delete(f"{ASYNC}/{pending}", headers=s.auth).status_code == 200

        r = c.delete(f"{ASYNC}/{running}", headers=s.auth)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        # The generation itself was aborted: the worker recorded a cancelled run and is free.
        after = submit(c, chat("after"), s.key)
        wait_status(c, after, s.key, ("succeeded",))
        assert metric(s, 'iir_job_duration_seconds_count{status="cancelled"}') == 1
        assert poll(c, running, s.key).json() == {"job_id": running, "status": "cancelled"}
        assert metric(s, 'iir_jobs{status="cancelled"}') == 2


def test_full_queue_is_429() -> None:
    slow = " ".join(["word"] * 100)
    env = {
        "IIR_JOB_CONCURRENCY": "1",
        "IIR_JOB_QUEUE_MAX": "2",
        "IIR_ECHO_TOKEN_DELAY_MS": "200",
    }
    with Server(env=env) as s, s.client() as c:
        first = submit(c, chat(slow), s.key)
        wait_status(c, first, s.key, ("running",))
        queued = [submit(c, chat(slow), s.key) for _ in range(2)]
        r = c.post(ASYNC, json=chat(), headers=s.auth)
        assert r.status_code == 429
        validate_error(r.json())
        assert "queue is full" in r.json()["error"]["message"]
        assert metric(s, "iir_job_queue_depth") == 2
        for job_id in [first, *queued]:
            assert c.delete(f"{ASYNC}/{job_id}", headers=s.auth).status_code == 200


# --- crash safety --------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.extend(int(p) for p in text)
    return out


def test_kill_9_then_restart_finishes_every_accepted_job(tmp_path: Path) -> None:
    data = tmp_path / "data"
    text = " ".join(["tok"] * 30)  # 30 tokens x 100 ms: each job runs for about 3 s
    slow = Server(env={"IIR_JOB_CONCURRENCY": "2", "IIR_ECHO_TOKEN_DELAY_MS": "100"}, data_dir=data)
    with slow, slow.client() as c:
        ids = [submit(c, chat(f"{text} {i}"), slow.key) for i in range(6)]
        wait_status(c, ids[0], slow.key, ("running",))
        wait_status(c, ids[1], slow.key, ("running",))
        states = [poll(c, j, slow.key).json()["status"] for j in ids]
        assert states.count("running") == 2 and states.count("pending") == 4
        assert slow.proc is not None
        victims = [*_children(slow.proc.pid), slow.proc.pid]
        assert len(victims) >= 2, "expected Granian's parent and its worker"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        slow.proc.wait(10)

    # Nothing has finished, and the file holds all six as they were at the kill.
    before = {j["job_id"]: j for j in list_jobs(data)}
    assert set(before) == set(ids)
    assert sorted(j["status"] for j in before.values()) == ["pending"] * 4 + ["running"] * 2

    with Server(data_dir=data) as fresh, fresh.client() as c:
        for job_id in ids:
            r = wait_status(c, job_id, fresh.key, ("succeeded", "failed", "cancelled"))
            assert r.headers["x-iir-job-status"] == "succeeded"
            validate(r.json(), "CreateChatCompletionResponse")
            assert r.json()["choices"][0]["message"]["content"].startswith("tok tok")
        assert fresh.wait_for_log(lambda ln: ln.get("event") == "jobs_recovered")
    attempts = {j["job_id"]: j["attempts"] for j in list_jobs(data)}
    # The two that were running were run again; the others ran once.
    assert sorted(attempts.values()) == [1, 1, 1, 1, 2, 2]


def test_kill_9_under_load_loses_no_accepted_job(tmp_path: Path) -> None:
    """Clients keep submitting while the server is killed; every 202 they got is a real job."""
    data = tmp_path / "data"
    accepted: list[str] = []
    for delay in (0.3, 0.9):
        srv = Server(data_dir=data, env={"IIR_LOG_LEVEL": "warning"})
        with srv:
            stop = threading.Event()

            def client(srv: Server = srv, stop: threading.Event = stop) -> None:
                with srv.client() as c:
                    while not stop.is_set():
                        try:
                            r = c.post(ASYNC, json=chat("under load"), headers=srv.auth)
                        except httpx.HTTPError:
                            return  # the server died mid-request: that job was never accepted
                        if r.status_code == 202:
                            accepted.append(r.json()["job_id"])

            threads = [threading.Thread(target=client) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(delay)
            assert srv.proc is not None
            for pid in [*_children(srv.proc.pid), srv.proc.pid]:
                os.kill(pid, signal.SIGKILL)
            srv.proc.wait(10)
            stop.set()
            for t in threads:
                t.join(30)
    assert len(accepted) > 0
    with Server(data_dir=data) as fresh, fresh.client() as c:
        for job_id in accepted:
            r = wait_status(c, job_id, fresh.key, ("succeeded", "failed", "cancelled"))
            assert r.headers["x-iir-job-status"] == "succeeded", job_id


def test_locked_database_is_503_and_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"IIR_JOB_DB_TIMEOUT": "0.2", "IIR_ECHO_TOKEN_DELAY_MS": "50"}
    with Server(env=env, data_dir=data) as s, s.client() as c:
        accepted = submit(c, chat("one two three four five six"), s.key)
        lock = sqlite3.connect(data / "iir.db", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            r = c.post(ASYNC, json=chat(), headers=s.auth)
            assert r.status_code == 503, r.text
            validate_error(r.json())
            assert "job store is unavailable" in r.json()["error"]["message"]
            assert r.headers["retry-after"] == "1"
            # Reads still work while another process holds the write lock.
            assert poll(c, accepted, s.key).status_code == 200
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        r = wait_status(c, accepted, s.key, ("succeeded", "failed"))
        assert r.headers["x-iir-job-status"] == "succeeded"
        later = submit(c, chat(), s.key)
        wait_status(c, later, s.key, ("succeeded",))


def test_full_disk_is_503_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file-size limit on the server (RLIMIT_FSIZE) makes its writes fail as on a full disk."""
    limit = 256 * 1024
    wrapper = tmp_path / "iir-limited"
    wrapper.write_text(
        f"#!{sys.executable}\n"
        "import os, resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))\n"
        f"os.execv({IIR!r}, [{IIR!r}, *sys.argv[1:]])\n"
    )
    wrapper.chmod(0o755)
    monkeypatch.setattr(harness, "IIR", str(wrapper))
    data = tmp_path / "data"
    with Server(data_dir=data, env={"IIR_LOG_LEVEL": "warning"}) as s, s.client() as c:
        accepted: list[str] = []
        refused = None
        for i in range(2000):
            r = c.post(ASYNC, json=chat(f"fill {i} " + "z" * 2000), headers=s.auth)
            if r.status_code != 202:
                refused = r
                break
            accepted.append(r.json()["job_id"])
        assert refused is not None, "the size limit never bit"
        assert refused.status_code == 503, refused.text
        validate_error(refused.json())
        assert "job store is unavailable" in refused.json()["error"]["message"]
        assert accepted, "nothing was accepted before the disk filled"
        # Space comes back: lift the limit on the running processes.
        assert s.proc is not None
        for pid in [s.proc.pid, *_children(s.proc.pid)]:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        for job_id in accepted:
            r = wait_status(c, job_id, s.key, ("succeeded", "failed", "cancelled"))
            assert r.headers["x-iir-job-status"] == "succeeded"
        later = submit(c, chat("after"), s.key)
        wait_status(c, later, s.key, ("succeeded",))


# --- expiry ----------------------------------------------------------------------------------------


def test_results_expire_after_the_ttl_and_are_purged() -> None:
    with Server(env={"IIR_JOB_TTL_SECONDS": "1"}) as s, s.client() as c:
        job_id = submit(c, chat(), s.key)
        wait_status(c, job_id, s.key, ("succeeded",))
        deadline = time.monotonic() + 30
        while poll(c, job_id, s.key).status_code == 200:
            assert time.monotonic() < deadline, "job never expired"
            time.sleep(0.1)
        r = poll(c, job_id, s.key)
        assert r.status_code == 404
        validate_error(r.json())
        assert s.wait_for_log(lambda ln: ln.get("event") == "jobs_purged", timeout=30)
        assert list_jobs(s.data_dir) == []


def test_store_purges_on_an_injected_clock(tmp_path: Path) -> None:
    """The store's TTL logic on a real file, driven by a clock the test moves."""
    now = [1_000_000.0]
    store = JobStore(tmp_path / "iir.db", ttl=60, clock=lambda: now[0])

    async def scenario() -> None:
        await store.open()
        try:
            await store.call(insert_job, "job_" + "1" * 32, "k", "chat", "m", b"{}", now[0])
            await store.call(insert_job, "job_" + "2" * 32, "k", "chat", "m", b"{}", now[0])
            assert await store.call(claim_job, "job_" + "1" * 32, now[0]) == ("chat", b"{}", "k")
            assert await store.call(
                finish_job, "job_" + "1" * 32, "succeeded", b"{}", None, now[0], 60
            )
            now[0] += 59
            assert await store.call(purge_jobs, now[0]) == 0
            assert await store.call(get_job, "job_" + "1" * 32, "k", now[0]) is not None
            now[0] += 1
            # Expired: invisible at once, deleted by the next purge; a pending job never expires.
            assert await store.call(get_job, "job_" + "1" * 32, "k", now[0]) is None
            assert await store.call(purge_jobs, now[0]) == 1
            now[0] += 10**6
            assert await store.call(purge_jobs, now[0]) == 0
            pending = await store.call(get_job, "job_" + "2" * 32, "k", now[0])
            assert pending is not None and pending.status == "pending"
        finally:
            await store.close()

    asyncio.run(scenario())
    rows = sqlite3.connect(tmp_path / "iir.db").execute("SELECT id, status FROM jobs").fetchall()
    assert rows == [("job_" + "2" * 32, "pending")]


def test_everything_stored_passes_the_scrubber(tmp_path: Path) -> None:
    """The pool's storage hook on a real store and the real chat service (echo backend)."""
    secret = "opaque-" + "Q7" * 20  # no built-in rule knows it: only the test's hook does
    seen: list[Any] = []

    def scrub(obj: Any) -> tuple[Any, dict[str, int]]:
        seen.append(obj)
        raw = orjson.dumps(obj).replace(secret.encode(), b"[REDACTED]")
        return orjson.loads(raw), {"redacted": 1}

    async def scenario() -> tuple[Any, Any]:
        store = JobStore(tmp_path / "iir.db", ttl=3600)
        jobs = Jobs(Pipeline(ModelRegistry([EchoBackend()]), Scrubber()))
        pool = JobPool(store, jobs.run, scrub=scrub, on_end=jobs.ended)
        jobs.bind(pool)
        await pool.start()
        try:
            ok = await pool.submit("owner", "chat", chat(f"key {secret}"))
            bad = await pool.submit("owner", "chat", {**chat(secret), "model": secret})
            done = []
            for job_id in (ok, bad):
                job = await pool.wait("owner", job_id, 30)
                done.append(job)
            return done[0], done[1]
        finally:
            await pool.stop()

    ok, bad = asyncio.run(scenario())
    assert ok.status == "succeeded" and bad.status == "failed"
    assert ok.result["choices"][0]["message"]["content"] == "key [REDACTED]"
    assert "[REDACTED]" in bad.error["message"]
    # Request, result and error each went through it; none of the file holds the secret.
    assert len(seen) == 4
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("iir.db"))
    assert secret.encode() not in raw


# --- the database file at start-up ---------------------------------------------------------------


def _serve(data: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IIR_")}
    env.update({"IIR_API_KEY": "k" * 32, "IIR_DATA_DIR": str(data)})
    return subprocess.run(
        [IIR, "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _refused(res: subprocess.CompletedProcess[str], words: str) -> None:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "iir.db" in lines[0] and words in lines[0], res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("IIR_JOB_CONCURRENCY", "0"),
        ("IIR_JOB_CONCURRENCY", "four"),
        ("IIR_JOB_QUEUE_MAX", "-1"),
        ("IIR_JOB_TTL_SECONDS", "0"),
        ("IIR_JOB_TTL_SECONDS", "1.5"),
        ("IIR_JOB_DB_TIMEOUT", "soon"),
    ],
)
def test_bad_job_settings_exit_2_naming_the_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IIR_")}
    env.update({"IIR_API_KEY": "k" * 32, "IIR_DATA_DIR": str(tmp_path), variable: value})
    res = subprocess.run([IIR, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], res.stderr


def test_garbage_database_file_exits_2_and_is_kept(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    junk = b"this is not a database at all\n" * 200
    (data / "iir.db").write_bytes(junk)
    _refused(_serve(data), "not a usable SQLite database")
    assert (data / "iir.db").read_bytes() == junk


def test_damaged_database_pages_exit_2(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Server(data_dir=data) as s, s.client() as c:
        for i in range(50):
            submit(c, chat(f"row {i} " + "x" * 500), s.key)
    path = data / "iir.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    raw = bytearray(path.read_bytes())
    assert len(raw) > 4 * 4096
    raw[2 * 4096 : 4 * 4096] = b"\xa5" * (2 * 4096)  # smash two b-tree pages, keep the header
    path.write_bytes(bytes(raw))
    res = _serve(data)
    assert res.returncode == 2 and "iir.db" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_unwritable_database_exits_2(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Server(data_dir=data):
        pass
    path = data / "iir.db"
    if os.geteuid() == 0:
        # root ignores file modes: make the write-ahead log impossible to create instead.
        for side in ("iir.db-wal", "iir.db-shm"):
            (data / side).unlink(missing_ok=True)
        (data / "iir.db-wal").mkdir()
    else:
        path.chmod(0o444)
    res = _serve(data)
    _refused(res, "cannot be written")
    assert path.is_file()


def test_database_path_that_is_a_directory_exits_2(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "iir.db").mkdir(parents=True)
    _refused(_serve(data), "not a regular file")


# --- the operator API ----------------------------------------------------------------------------


def test_operator_list_show_cancel(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"IIR_JOB_CONCURRENCY": "1", "IIR_ECHO_TOKEN_DELAY_MS": "200"}
    with Server(env=env, data_dir=data) as s, s.client() as c:
        slow = submit(c, chat(" ".join(["w"] * 100)), s.key)
        wait_status(c, slow, s.key, ("running",))
        waiting = submit(c, chat("sk-live-secret? no: plain text"), s.key)
        jobs = list_jobs(data)
        assert [j["job_id"] for j in jobs] == [waiting, slow]
        assert all(s.key not in json.dumps(j) for j in jobs)
        assert list_jobs(data, status="pending")[0]["job_id"] == waiting
        shown = show_job(data, waiting)
        assert shown is not None and shown["request"]["messages"][0]["content"].startswith("sk-")
        assert show_job(data, "job_" + "f" * 32) is None
        assert cancel_job_offline(data, waiting) == "pending"
        assert poll(c, waiting, s.key).json()["status"] == "cancelled"
        c.delete(f"{ASYNC}/{slow}", headers=s.auth)
    # The key never reaches the file, only its derived id.
    raw = b"".join(p.read_bytes() for p in data.iterdir() if p.name.startswith("iir.db"))
    assert s.key.encode() not in raw


# --- fuzz ------------------------------------------------------------------------------------------


def _check(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text
    assert "Traceback" not in r.text
    if r.status_code >= 400:
        validate_error(r.json())
    else:
        assert r.status_code == 202 and JOB_ID.fullmatch(r.json()["job_id"])


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=chat_body | json_values | st.binary(max_size=64))
def test_fuzzed_submissions_never_500(srv: Server, body: Any) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with srv.client() as c:
        r = c.post(ASYNC, content=raw, headers=srv.auth)
        _check(r)
        if r.status_code == 202:
            done = wait_status(c, r.json()["job_id"], srv.key, ("succeeded", "failed"))
            if done.headers["x-iir-job-status"] == "succeeded":
                validate(done.json(), "CreateChatCompletionResponse")
            else:
                validate(done.json()["error"], "Error")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    job_id=st.text(alphabet=string.ascii_letters + string.digits + "_-~", min_size=1, max_size=80)
)
def test_fuzzed_job_ids_are_404(srv: Server, job_id: str) -> None:
    with srv.client() as c:
        for r in (poll(c, job_id, srv.key), c.delete(f"{ASYNC}/{job_id}", headers=srv.auth)):
            assert r.status_code == 404, r.text
            validate_error(r.json())


# --- bounds: attempts, quotas, result size, store failures, file size ---------------------------


def _kill(srv: Server) -> None:
    assert srv.proc is not None
    for pid in [*_children(srv.proc.pid), srv.proc.pid]:
        os.kill(pid, signal.SIGKILL)
    srv.proc.wait(10)


def test_a_job_the_server_dies_under_too_often_fails_as_crashed(tmp_path: Path) -> None:
    """A job running whenever the process dies (a generation that brings it down) was run again
    after every restart; after IIR_JOB_MAX_ATTEMPTS interruptions it fails instead."""
    data = tmp_path / "data"
    env = {"IIR_JOB_MAX_ATTEMPTS": "2", "IIR_ECHO_TOKEN_DELAY_MS": "200"}
    slow = chat(" ".join(["tok"] * 200))  # 40 s: always running when killed
    job_id = ""
    for attempt in (1, 2):
        with Server(env=env, data_dir=data) as s, s.client() as c:
            if attempt == 1:
                job_id = submit(c, slow, s.key)
            wait_status(c, job_id, s.key, ("running",))
            _kill(s)
        assert [j["attempts"] for j in list_jobs(data)] == [attempt]
    with Server(env=env, data_dir=data) as s, s.client() as c:
        r = poll(c, job_id, s.key)
        assert r.headers["x-iir-job-status"] == "failed", r.text
        validate(r.json()["error"], "Error")
        validate_ours(s, r.json(), "JobStatus")
        assert r.json()["error"]["code"] == "job_crashed"
        assert "IIR_JOB_MAX_ATTEMPTS" in r.json()["error"]["message"]
        assert s.wait_for_log(lambda ln: ln.get("event") == "job_crashed")
        # the server is otherwise fine, and runs new jobs
        wait_status(c, submit(c, chat("after"), s.key), s.key, ("succeeded",))
    assert [j["status"] for j in list_jobs(data)].count("failed") == 1


def test_a_clean_shutdown_is_not_counted_as_an_attempt(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"IIR_JOB_MAX_ATTEMPTS": "1", "IIR_ECHO_TOKEN_DELAY_MS": "100"}
    with Server(env=env, data_dir=data) as s, s.client() as c:
        job_id = submit(c, chat(" ".join(["tok"] * 40)), s.key)
        wait_status(c, job_id, s.key, ("running",))
        assert s.stop() == 0  # SIGTERM: the job goes back to pending
    assert [(j["status"], j["attempts"]) for j in list_jobs(data)] == [("pending", 0)]
    with Server(env=env, data_dir=data) as s, s.client() as c:
        r = wait_status(c, job_id, s.key, ("succeeded", "failed"))
        assert r.headers["x-iir-job-status"] == "succeeded", r.text
    assert [j["attempts"] for j in list_jobs(data)] == [1]


def test_per_key_limit_on_jobs_not_ended(tmp_path: Path) -> None:
    env = {
        "IIR_JOB_MAX_PENDING_PER_KEY": "2",
        "IIR_JOB_CONCURRENCY": "1",
        "IIR_ECHO_TOKEN_DELAY_MS": "200",
        "IIR_ALLOWED_KEYS": SECOND,
    }
    slow = chat(" ".join(["word"] * 100))
    with Server(env=env, data_dir=tmp_path / "data") as s, s.client() as c:
        first, second = submit(c, slow, s.key), submit(c, slow, s.key)
        r = c.post(ASYNC, json=chat(), headers=s.auth)
        assert r.status_code == 429, r.text
        validate_error(r.json())
        assert r.json()["error"]["code"] == "too_many_pending_jobs"
        assert "IIR_JOB_MAX_PENDING_PER_KEY" in r.json()["error"]["message"]
        assert r.headers["retry-after"] == "5"
        theirs = submit(c, chat("theirs"), SECOND)  # another key is not affected
        assert c.delete(f"{ASYNC}/{second}", headers=s.auth).status_code == 200
        third = submit(c, chat("room again"), s.key)
        for job_id in (first, third, theirs):
            c.delete(f"{ASYNC}/{job_id}", headers=s.auth)
            c.delete(f"{ASYNC}/{job_id}", headers={"Authorization": f"Bearer {SECOND}"})


def test_per_key_limit_on_stored_bytes_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"IIR_JOB_MAX_BYTES_PER_KEY": "40000", "IIR_ALLOWED_KEYS": SECOND}
    text = "b" * 8000  # each job stores about 8 KB of request and 8 KB of result
    with Server(env=env, data_dir=data) as s, s.client() as c:
        done = [submit(c, chat(text), s.key) for _ in range(2)]
        for job_id in done:
            wait_status(c, job_id, s.key, ("succeeded",))
        r = c.post(ASYNC, json=chat(text), headers=s.auth)
        assert r.status_code == 429, r.text
        validate_error(r.json())
        assert r.json()["error"]["code"] == "job_storage_full"
        assert "IIR_JOB_MAX_BYTES_PER_KEY" in r.json()["error"]["message"]
        submit(c, chat("small"), s.key)  # what still fits is accepted
        submit(c, chat(text), SECOND)
    with Server(env=env, data_dir=data) as s, s.client() as c:
        r = c.post(ASYNC, json=chat(text), headers=s.auth)
        assert r.status_code == 429 and r.json()["error"]["code"] == "job_storage_full"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (chat("r" * 3000), "job_result_too_large"),
        (chat("word " * 120_000, n=128), "answer_too_large"),
    ],
)
def test_a_result_over_the_cap_fails_the_job(tmp_path: Path, body: Any, code: str) -> None:
    env = {"IIR_JOB_MAX_RESULT_BYTES": "2048"}
    with Server(env=env, data_dir=tmp_path / "data") as s, s.client() as c:
        job_id = submit(c, body, s.key)
        r = wait_status(c, job_id, s.key, ("succeeded", "failed"))
        assert r.headers["x-iir-job-status"] == "failed", r.text[:300]
        validate(r.json()["error"], "Error")
        assert r.json()["error"]["code"] == code, r.json()
        ok = submit(c, chat("short enough"), s.key)
        wait_status(c, ok, s.key, ("succeeded",))
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").iterdir() if "iir.db" in p.name)
    assert b"r" * 3000 not in raw.replace(orjson.dumps(body), b"")  # the result was never stored


def test_a_write_the_store_keeps_refusing_fails_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The result does not fit on the disk (a file-size limit stands in for a full disk): the
    worker retries IIR_JOB_WRITE_RETRIES times, then records the failure (small enough to fit)
    instead of retrying for ever, and goes on with the next job."""
    limit = 768 * 1024
    wrapper = tmp_path / "iir-limited"
    wrapper.write_text(
        f"#!{sys.executable}\n"
        "import os, resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))\n"
        f"os.execv({IIR!r}, [{IIR!r}, *sys.argv[1:]])\n"
    )
    wrapper.chmod(0o755)
    monkeypatch.setattr(harness, "IIR", str(wrapper))
    env = {"IIR_LOG_LEVEL": "warning", "IIR_JOB_WRITE_RETRIES": "2"}
    with Server(env=env, data_dir=tmp_path / "data") as s, s.client() as c:
        # 100 KB asked for 12 times: a 1.2 MB result, beyond the limit; the request fits
        job_id = submit(c, chat("q" * 100_000, n=12), s.key)
        r = wait_status(c, job_id, s.key, ("succeeded", "failed"))
        assert r.headers["x-iir-job-status"] == "failed", r.text[:300]
        validate(r.json()["error"], "Error")
        assert r.json()["error"]["code"] == "job_store_unavailable", r.json()
        assert r.json()["error"]["message"].startswith("The job store could not record")
        assert s.wait_for_log(lambda ln: ln.get("event") == "job_store_gave_up")
        wait_status(c, submit(c, chat("next"), s.key), s.key, ("succeeded",))


def _version_1_file(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    assert isinstance(MIGRATIONS[0], str)
    for stmt in MIGRATIONS[0].split(";"):
        if stmt.strip():
            conn.execute(stmt)
    for i in range(40):
        request = orjson.dumps({"model": "iir/echo", "pad": "x" * 20_000})
        insert_job(conn, f"job_{i:032x}", "owner", "chat", "iir/echo", request, 1.0 + i)
    conn.execute("DELETE FROM jobs WHERE rowid % 2 = 0")  # free pages a purge would leave
    conn.execute("PRAGMA user_version=1")
    conn.close()


def test_a_version_1_file_is_migrated_and_compacted(tmp_path: Path) -> None:
    path = tmp_path / "iir.db"
    _version_1_file(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] >= 100
    conn.close()
    check_database(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT id, length(request) FROM jobs ORDER BY id").fetchall()
    assert rows == [(f"job_{i:032x}", 20_029) for i in range(40) if (i + 1) % 2]
    conn.close()
    check_database(path)  # again: nothing left to do
    assert list_jobs(tmp_path)[0]["job_id"] == f"job_{38:032x}"


def test_a_new_file_is_incremental_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "iir.db"
    check_database(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_purged_jobs_give_their_space_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Server(env={"IIR_JOB_TTL_SECONDS": "1"}, data_dir=data) as s, s.client() as c:
        for job_id in [submit(c, chat("p" * 50_000), s.key) for _ in range(20)]:
            wait_status(c, job_id, s.key, ("succeeded",))
        peak = sum(p.stat().st_size for p in data.iterdir() if p.name.startswith("iir.db"))
        deadline = time.monotonic() + 30
        # the purge logs its count once the freed pages went back (expired jobs are invisible
        # at once, deleted by the next purge)
        while sum(ln["count"] for ln in s.log_lines() if ln.get("event") == "jobs_purged") < 20:
            assert time.monotonic() < deadline, "jobs were not purged"
            time.sleep(0.2)
        conn = sqlite3.connect(data / "iir.db")
        try:
            assert conn.execute("PRAGMA freelist_count").fetchone()[0] < 16
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        assert peak > 2_000_000
        assert (data / "iir.db").stat().st_size < peak / 4
