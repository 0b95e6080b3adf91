"""A fleet of three real ``iir serve`` boxes (A, B, C) sharing a real ``redis-server`` for limits
and a real PostgreSQL for jobs, and serving each other's models as peers. Box C alone has a local
model (the stand-in engine, tests/fake_vllm.py); A and B have none. The servers are shared by the
whole module; the test that kills a box for good starts its own two."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from iir.store.pgjobs import PgJobStore

from .fleet_servers import PostgresServer, RedisServer, postgres_server, redis_server
from .harness import Server
from .schemas import validate

PEER_KEY = "peer-key-0123456789abcdef0123456789abcdef"
RPM = 120
# One key per test that counts requests, so that no test eats another's budget.
KEYS = [f"fleet-key-{i}-0123456789abcdef0123456789" for i in range(9)]
C_MODEL = "tiny-c"
#: Seconds a box may take to start: three start at once, on a small shared machine.
START_TIMEOUT = 120


def fleet_env(redis: RedisServer, jobs_url: str, **more: str) -> dict[str, str]:
    return {
        "IIR_ALLOWED_KEYS": ",".join(KEYS),
        "IIR_STATE_URL": redis.url,
        "IIR_JOB_STORE_URL": jobs_url,
        "IIR_JOB_LEASE_SECONDS": "3",
        "IIR_RATE_LIMIT_RPM_PER_KEY": str(RPM),
        "IIR_PEER_KEY": PEER_KEY,
        "IIR_PEER_POLL_SECONDS": "0.5",
        **more,
    }


@contextlib.contextmanager
def booted(env: dict[str, str]) -> Iterator[Server]:
    box = Server(env=env)
    try:
        yield box.start(timeout=START_TIMEOUT)
    finally:
        box.close()


def start_fleet(boxes: list[Server]) -> None:
    for box in boxes:
        box.env["IIR_PEERS"] = ",".join(b.url for b in boxes if b is not box)
    with concurrent.futures.ThreadPoolExecutor(len(boxes)) as pool:
        list(pool.map(lambda box: box.start(timeout=START_TIMEOUT), boxes))


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def fleet(redis: RedisServer, postgres: PostgresServer) -> Iterator[list[Server]]:
    jobs_url = postgres.create_database("fleet_jobs")
    a = Server(env=fleet_env(redis, jobs_url))
    b = Server(env=fleet_env(redis, jobs_url))
    c = Server(
        env=fleet_env(
            redis,
            jobs_url,
            IIR_VLLM_ENGINE_FACTORY="tests.fake_vllm:factory",
            IIR_LOCAL_MODELS=f"{C_MODEL}=/m/{C_MODEL}",
        )
    )
    boxes = [a, b, c]
    try:
        start_fleet(boxes)
        for box in (a, b):
            wait_for_model(box, C_MODEL)
        yield boxes
    finally:
        for box in boxes:
            box.close()


@functools.cache
def http() -> httpx.Client:
    """One pooled client for the module (a client per request costs ~0.1 s of TLS set-up)."""
    return httpx.Client(timeout=30)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def model_ids(box: Server, key: str = KEYS[0]) -> dict[str, dict[str, Any]]:
    r = http().get(box.url + "/v1/models", headers=auth(key), timeout=10)
    assert r.status_code == 200, r.text
    return {m["id"]: m for m in r.json()["data"]}


def wait_for_model(box: Server, model: str, present: bool = True, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (model in model_ids(box)) != present:
        if time.monotonic() > deadline:
            raise AssertionError(f"{model} {'never appeared' if present else 'never left'}")
        time.sleep(0.1)


def chat(box: Server, key: str, model: str = C_MODEL, **kw: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hello from the fleet"}]}
    return http().post(
        box.url + "/v1/chat/completions",
        json={**body, **kw.pop("extra", {})},
        headers={**auth(key), **kw.pop("headers", {})},
        timeout=30,
    )


# --- peers ---------------------------------------------------------------------------------------


def test_a_model_only_box_c_serves_is_listed_on_every_box(fleet: list[Server]) -> None:
    a, b, c = fleet
    for box in (a, b):
        listed = model_ids(box)[C_MODEL]
        assert listed["boxes"] == [f"127.0.0.1:{c.port}"]
        assert listed["owned_by"] == "peer"
        validate(
            http().get(box.url + "/v1/models", headers=auth(KEYS[0])).json(), "ListModelsResponse"
        )
    assert "boxes" not in model_ids(c)[C_MODEL]  # C's own model is C's, unmarked
    status = http().get(a.url + "/v1/registry/status", headers=auth(KEYS[0])).json()
    peers = {p["box"]: p for p in status["peers"]}
    assert peers[f"127.0.0.1:{c.port}"]["state"] == "up"
    assert peers[f"127.0.0.1:{c.port}"]["models"] == [C_MODEL]
    assert peers[f"127.0.0.1:{b.port}"]["models"] == []


def test_a_model_only_box_c_serves_is_answered_through_box_a(fleet: list[Server]) -> None:
    a, _, c = fleet
    r = chat(a, KEYS[0], headers={"x-request-id": "fleet-forwarded-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateChatCompletionResponse")
    assert body["model"] == C_MODEL
    assert body["choices"][0]["message"]["content"].strip() == "hello from the fleet"
    assert r.headers["x-request-id"] == "fleet-forwarded-1"
    # C ran it, under A's request id.
    seen = c.wait_for_log(
        lambda ln: (
            ln.get("request_id") == "fleet-forwarded-1"
            and ln.get("route") == "/v1/chat/completions"
        )
    )
    assert seen and seen[0]["status"] == 200


def test_a_forwarded_stream_arrives_whole(fleet: list[Server]) -> None:
    a = fleet[0]
    with http().stream(
        "POST",
        a.url + "/v1/chat/completions",
        json={
            "model": C_MODEL,
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "one two three four"}],
        },
        headers=auth(KEYS[0]),
        timeout=30,
    ) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [orjson.loads(ln[6:]) for ln in lines[:-1]]
    text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"])
    assert text.strip() == "one two three four"
    assert chunks[-1]["usage"]["completion_tokens"] == 4


def test_auto_routes_to_a_peers_local_model(fleet: list[Server]) -> None:
    b = fleet[1]
    r = chat(b, KEYS[0], model="auto")
    assert r.status_code == 200, r.text
    assert r.headers["x-iir-route-model"] == C_MODEL
    assert r.json()["model"] == C_MODEL


def test_a_forwarded_request_counts_once_against_the_key(fleet: list[Server]) -> None:
    a, _, c = fleet
    key = KEYS[1]
    for _ in range(10):
        r = chat(a, key)
        assert r.status_code == 200, r.text
    # The state server saw 10 requests for this key, not 20: C did not count A's forwards
    # (counted twice, 20 would be gone, and 15 s of refill would be needed to hide it).
    remaining = int(r.headers["x-ratelimit-remaining-requests"])
    assert remaining >= RPM - 10
    hops = c.log_lines()
    assert not any(ln.get("status") == 429 for ln in hops)


def test_the_peer_marker_needs_the_peer_key_and_the_peer_key_the_marker(
    fleet: list[Server],
) -> None:
    c = fleet[2]
    marked = {"x-iir-peer": "somebox"}
    r = chat(c, KEYS[0], headers=marked)  # a client key claiming to be a peer
    assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_peer_key"
    r = chat(c, PEER_KEY)  # the peer key without the marker is no client key
    assert r.status_code == 403
    r = http().post(
        c.url + "/v1/async/chat/completions",
        json={"model": C_MODEL, "messages": [{"role": "user", "content": "x"}]},
        headers={**auth(PEER_KEY), **marked},
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_for_peers"
    r = chat(c, PEER_KEY, headers=marked)  # what a peer sends: served, not limited
    assert r.status_code == 200, r.text
    assert "x-ratelimit-limit-requests" not in r.headers


# --- shared limits --------------------------------------------------------------------------------


def test_a_key_limit_holds_across_the_three_boxes(fleet: list[Server]) -> None:
    key = KEYS[2]
    statuses: list[int] = []

    def one(i: int) -> int:
        box = fleet[i % 3]
        return http().get(box.url + "/v1/models", headers=auth(key), timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(one, range(3 * RPM)))
    admitted = statuses.count(200)
    assert set(statuses) <= {200, 429}
    # Within the limit plus its burst (the burst equals the limit): three boxes limiting alone
    # would each have admitted their RPM (3 x RPM, every request).
    assert RPM <= admitted <= 2 * RPM, admitted


def test_state_server_killed_mid_load_falls_back_without_a_500(
    fleet: list[Server], redis: RedisServer
) -> None:
    key = KEYS[3]
    statuses: list[int] = []

    def one(i: int) -> int:
        box = fleet[i % 3]
        return http().get(box.url + "/v1/models", headers=auth(key), timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one, i) for i in range(60)]
        time.sleep(0.05)
        redis.kill()
        futures += [pool.submit(one, i) for i in range(60)]
        statuses = [f.result() for f in futures]
    redis.start()
    assert set(statuses) <= {200, 429}, sorted(set(statuses))
    for box in fleet:  # each box logged the outage once
        downs = box.wait_for_log(lambda ln: ln.get("event") == "state_down")
        assert len(downs) == 1
        assert box.wait_for_log(lambda ln: ln.get("event") == "state_up", timeout=15)


def test_state_server_killed_mid_load_fails_closed_when_configured() -> None:
    with (
        redis_server() as state,
        booted(
            {
                "IIR_STATE_URL": state.url,
                "IIR_STATE_FAILURE": "closed",
                "IIR_RATE_LIMIT_RPM_PER_KEY": "100000",
            }
        ) as box,
    ):

        def one(_: int) -> int:
            return http().get(box.url + "/v1/models", headers=box.auth).status_code

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            before = list(pool.map(one, range(20)))
            state.kill()
            during = list(pool.map(one, range(20)))
            assert http().get(box.url + "/health").status_code == 200  # probes never need it
            state.start()
            deadline = time.monotonic() + 15
            while one(0) != 200:
                assert time.monotonic() < deadline, "never reconnected"
                time.sleep(0.1)
        assert set(before) == {200}
        assert set(during) == {503}  # refused as configured, never a 500
        r = http().get(box.url + "/v1/models", headers=box.auth)
        assert r.status_code == 200 and r.headers["x-ratelimit-limit-requests"] == "100000"


# --- shared jobs ---------------------------------------------------------------------------------

JOB_BODY = {"model": "iir/echo", "messages": [{"role": "user", "content": "a job for the fleet"}]}
JOBS = "/v1/async/chat/completions"


def submit(box: Server, key: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return http().post(box.url + JOBS, json=body or JOB_BODY, headers=auth(key))


def poll(box: Server, key: str, job_id: str, wait: float = 10) -> httpx.Response:
    return http().get(f"{box.url}{JOBS}/{job_id}?wait={wait}", headers=auth(key))


def finished(box: Server, key: str, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = poll(box, key, job_id)
        assert r.status_code == 200, r.text
        if r.headers["x-iir-job-status"] not in ("pending", "running"):
            return {"status": r.headers["x-iir-job-status"], **r.json()}
        assert time.monotonic() < deadline, f"{job_id} still {r.headers['x-iir-job-status']}"


def test_a_job_submitted_to_box_a_is_polled_on_box_b(fleet: list[Server]) -> None:
    a, b, c = fleet
    key = KEYS[5]
    r = submit(a, key)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    done = finished(b, key, job_id)  # long-polled on B, wherever it ran
    assert done["status"] == "succeeded" and done["object"] == "chat.completion"
    assert done["choices"][0]["message"]["content"].strip() == "a job for the fleet"
    assert poll(c, key, job_id).headers["x-iir-job-status"] == "succeeded"
    assert poll(c, KEYS[6], job_id).status_code == 404  # still only its owner's
    # A job for a model only C serves, submitted to B: runs wherever, answered by C's engine.
    r = submit(b, key, {**JOB_BODY, "model": C_MODEL})
    assert r.status_code == 202, r.text
    done = finished(a, key, r.json()["job_id"])
    assert done["status"] == "succeeded" and done["model"] == C_MODEL


RESPONSES = "/v1/responses"


def respond(box: Server, key: str, body: dict[str, Any]) -> httpx.Response:
    return http().post(box.url + RESPONSES, json={"model": "iir/echo", **body}, headers=auth(key))


def response_on(box: Server, key: str, response_id: str, tail: str = "") -> httpx.Response:
    return http().get(f"{box.url}{RESPONSES}/{response_id}{tail}", headers=auth(key))


def test_a_response_stored_on_box_a_is_answered_by_every_box(fleet: list[Server]) -> None:
    a, b, c = fleet
    key = KEYS[8]
    r = respond(a, key, {"input": "stored on A"})
    assert r.status_code == 200, r.text
    first = r.json()
    validate(first, "Response")
    got = response_on(b, key, first["id"])
    assert got.status_code == 200, got.text
    assert got.json()["id"] == first["id"] and got.json()["output"] == first["output"]
    assert response_on(c, KEYS[6], first["id"]).status_code == 404  # still only its owner's
    # Continued on C (the earlier turn read from the shared store: the prompt is longer than
    # the same input alone), its input items listed on B, deleted on B, gone on A.
    alone = respond(c, key, {"input": "continued on C", "store": False}).json()["usage"]
    r = respond(c, key, {"input": "continued on C", "previous_response_id": first["id"]})
    assert r.status_code == 200, r.text
    second = r.json()["id"]
    assert r.json()["previous_response_id"] == first["id"]
    assert r.json()["usage"]["input_tokens"] > alone["input_tokens"]
    items = response_on(b, key, second, "/input_items")
    assert items.status_code == 200, items.text
    assert [p["text"] for i in items.json()["data"] for p in i["content"]] == ["continued on C"]
    r = http().delete(f"{b.url}{RESPONSES}/{second}", headers=auth(key))
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert response_on(a, key, second).status_code == 404
    # A background response submitted to A is polled on B and C, wherever its job ran.
    r = respond(a, key, {"input": "a background response", "background": True})
    assert r.status_code == 200, r.text
    rid = r.json()["id"]
    deadline = time.monotonic() + 60
    while (got := response_on(b, key, rid)).json().get("status") in ("queued", "in_progress"):
        assert time.monotonic() < deadline, got.text
        time.sleep(0.5)
    assert got.status_code == 200 and got.json()["status"] == "completed", got.text
    assert got.json()["output"][0]["content"][0]["text"] == "a background response"
    assert response_on(c, key, rid).json()["status"] == "completed"


def test_a_job_cancelled_on_one_box_stops_on_the_box_running_it(fleet: list[Server]) -> None:
    a, b, _ = fleet
    key = KEYS[5]
    slow = {**JOB_BODY, "messages": [{"role": "user", "content": "__slow__ " + "word " * 50}]}
    r = submit(a, key, {**slow, "model": C_MODEL})
    assert r.status_code == 202
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 30
    while poll(b, key, job_id, wait=0).headers["x-iir-job-status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = http().delete(f"{b.url}{JOBS}/{job_id}", headers=auth(key))
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # Whichever box runs it learns at its next lease renewal (a third of 3 s) and stops.
    found = []
    for box in fleet:
        found += box.wait_for_log(
            lambda ln: ln.get("event") == "job_lost" and ln.get("job_id") == job_id, timeout=0.1
        )
    deadline = time.monotonic() + 10
    while not found:
        assert time.monotonic() < deadline, "no box stopped the cancelled job"
        time.sleep(0.1)
        for box in fleet:
            found += box.wait_for_log(
                lambda ln: ln.get("event") == "job_lost" and ln.get("job_id") == job_id,
                timeout=0,
            )
    assert poll(a, key, job_id).headers["x-iir-job-status"] == "cancelled"


def test_postgres_restarted_mid_load_loses_no_accepted_job(
    fleet: list[Server], postgres: PostgresServer
) -> None:
    key = KEYS[7]
    accepted: list[tuple[Server, str]] = []
    statuses: list[int] = []

    def one(i: int) -> None:
        box = fleet[i % 3]
        r = submit(box, key)
        statuses.append(r.status_code)
        if r.status_code == 202:
            accepted.append((box, r.json()["job_id"]))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one, i) for i in range(20)]
        time.sleep(0.2)
        postgres.restart()  # immediate shutdown (as in a crash), recovery, back
        futures += [pool.submit(one, i) for i in range(20, 40)]
        for f in futures:
            f.result()
    assert set(statuses) <= {202, 503}, sorted(set(statuses))  # refused cleanly, never a 500
    assert len(accepted) >= 20
    for box, job_id in accepted:  # every accepted job is there, and ends
        other = fleet[(fleet.index(box) + 1) % 3]
        assert finished(other, key, job_id)["status"] == "succeeded"


# --- a dead peer (last: box C stops and comes back) ---------------------------------------------


def test_a_dead_peer_is_skipped_and_its_models_leave_the_list(fleet: list[Server]) -> None:
    a, _, c = fleet
    c.stop()
    wait_for_model(a, C_MODEL, present=False)
    r = chat(a, KEYS[4])
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    status = http().get(a.url + "/v1/registry/status", headers=auth(KEYS[4])).json()
    gone = {p["box"]: p for p in status["peers"]}[f"127.0.0.1:{c.port}"]
    assert gone["state"] == "down" and gone["models"] == [] and gone["reason"]
    assert a.wait_for_log(lambda ln: ln.get("event") == "peer_down")
    c.start(timeout=START_TIMEOUT)  # back on the same port: polled, listed and served again
    wait_for_model(a, C_MODEL)
    assert chat(a, KEYS[4]).status_code == 200


# --- a box killed under its jobs ----------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            children = [int(c) for c in fh.read().split()]
    except OSError:
        return []
    return [d for c in children for d in (c, *descendants(c))]


def kill_box(box: Server) -> None:
    """``kill -9`` on the box's every process at once (Granian's worker is a child of
    ``iir serve``), as a power cut would stop them."""
    assert box.proc is not None
    for pid in [box.proc.pid, *descendants(box.proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    box.stop()


def test_box_a_killed_while_running_jobs_box_b_finishes_every_one(
    redis: RedisServer, postgres: PostgresServer
) -> None:
    url = postgres.create_database("killed_box")
    env = {
        **fleet_env(redis, url),
        "IIR_JOB_LEASE_SECONDS": "2",
        "IIR_JOB_CONCURRENCY": "2",
        "IIR_ECHO_TOKEN_DELAY_MS": "100",  # each job takes a few seconds
    }
    key = KEYS[0]
    long = {**JOB_BODY, "messages": [{"role": "user", "content": "word " * 30}]}
    with booted(env) as a:
        ids = []
        for _ in range(4):
            r = submit(a, key, long)
            assert r.status_code == 202, r.text
            ids.append(r.json()["job_id"])
        deadline = time.monotonic() + 30
        while (
            sum(poll(a, key, i, wait=0).headers["x-iir-job-status"] == "running" for i in ids) < 2
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        kill_box(a)  # no release, no goodbye: its leases just stop being renewed
    with booted(env) as b:
        for job_id in ids:
            done = finished(b, key, job_id, timeout=90)
            assert done["status"] == "succeeded", done
            assert done["choices"][0]["message"]["content"].split() == ["word"] * 30

    async def attempts() -> list[int]:
        store = PgJobStore(url, ttl=60)
        await store.open()
        jobs = [await store.get(i, None) for i in ids]
        await store.close()
        return sorted(j.attempts for j in jobs if j is not None)

    # The two that were running on A ran again on B, counted; the two waiting ran once.
    assert asyncio.run(attempts()) == [1, 1, 2, 2]
