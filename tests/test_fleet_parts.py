"""The fleet's parts in process: shared limits (``IIR_STATE_URL``) against a real
``redis-server`` (two limiters stand for two boxes; the server is killed and flushed for real),
how a peer's status is read, and how routing weighs a peer. The fleet of real ``iir serve``
processes is in tests/test_fleet.py."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from iir.backends.peers import PeerBackend, PeerModel
from iir.core.errors import ApiError
from iir.core.settings import load_settings
from iir.core.types import Load
from iir.ops import metrics
from iir.policy.limits import Limits, SharedLimits, build_limits
from iir.policy.routing.router import Option
from iir.store.jobs import new_job_id
from iir.store.pgjobs import PgJobStore
from iir.store.pgresponses import PgResponses
from iir.store.postgres import SCHEMA_VERSION
from iir.store.responses import ResponseStore, new_response_id
from iir.store.sqlite import StoreError, StoreUnavailable
from iir.store.state import StateStore, redacted

from .fleet_servers import PostgresServer, RedisServer, postgres_server, redis_server
from .harness import IIR, REPO


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as srv:
        yield srv


def settings(url: str, **env: str) -> Any:
    return load_settings({"IIR_API_KEY": "k" * 32, "IIR_STATE_URL": url, **env})


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def admitted(limits: Limits, key: str, n: int) -> int:
    ok = 0
    for _ in range(n):
        try:
            await limits.check_key(key)
            ok += 1
        except ApiError as err:
            assert err.status == 429
    return ok


def test_a_key_limit_holds_across_two_boxes(redis: RedisServer) -> None:
    async def go() -> None:
        env = {"IIR_RATE_LIMIT_RPM_PER_KEY": "10"}
        a, b = build_limits(settings(redis.url, **env)), build_limits(settings(redis.url, **env))
        assert isinstance(a, SharedLimits) and isinstance(b, SharedLimits)
        # Interleaved, as two boxes serving one client would be: 10 a minute, burst 10.
        results = await asyncio.gather(*(admitted(x, "key-across", 8) for x in (a, b, a, b)))
        assert sum(results) == 10, results
        for x in (a, b):
            await x.close()

    run(go())


def test_same_headers_and_refusal_as_the_in_process_limits(redis: RedisServer) -> None:
    async def go() -> None:
        env = {"IIR_RATE_LIMIT_RPM_PER_KEY": "3"}
        shared = build_limits(settings(redis.url, **env))
        local = Limits(settings(redis.url, **env))
        for _ in range(3):
            got = await shared.check_key("key-headers")
            want = await local.check_key("key-headers")
            assert [h for h, _ in got] == [h for h, _ in want]
            assert dict(got)["x-ratelimit-limit-requests"] == "3"
            assert (
                dict(got)["x-ratelimit-remaining-requests"]
                == dict(want)["x-ratelimit-remaining-requests"]
            )
        refusals = []
        for limits in (shared, local):
            with pytest.raises(ApiError) as caught:
                await limits.check_key("key-headers")
            refusals.append(caught.value)
        assert [e.status for e in refusals] == [429, 429]
        assert [e.code for e in refusals] == ["rate_limit_exceeded"] * 2
        assert sorted(dict(refusals[0].headers)) == sorted(dict(refusals[1].headers))
        assert int(dict(refusals[0].headers)["retry-after"]) >= 1
        await shared.close()

    run(go())


def test_a_reservation_is_settled_on_the_state_server(redis: RedisServer) -> None:
    async def go() -> None:
        env = {"IIR_RATE_LIMIT_TPM_PER_KEY": "1000"}
        a, b = build_limits(settings(redis.url, **env)), build_limits(settings(redis.url, **env))
        assert isinstance(a, SharedLimits)
        held = await a.reserve_tokens("key-tokens", 900)
        assert dict(held.headers)["x-ratelimit-remaining-tokens"] == "100"
        with pytest.raises(ApiError) as caught:  # box B sees box A's reservation
            await b.reserve_tokens("key-tokens", 500)
        assert caught.value.status == 429
        held.settle(100)  # the answer used 100: 800 go back, on the same server
        await asyncio.wait(set(a._settling))
        again = await b.reserve_tokens("key-tokens", 500)
        assert 300 <= int(dict(again.headers)["x-ratelimit-remaining-tokens"]) <= 400
        held.settle(0)  # settled once only
        assert not a._settling
        for x in (a, b):
            await x.close()

    run(go())


def test_a_forgotten_script_is_loaded_again(redis: RedisServer) -> None:
    async def go() -> None:
        store = StateStore(redis.url)
        first = await store.gcra("req", "key-noscript", 60, 60, 1)
        subprocess.run(
            ["redis-cli", "-p", str(redis.port), "SCRIPT", "FLUSH"], check=True, capture_output=True
        )
        second = await store.gcra("req", "key-noscript", 60, 60, 1)
        assert first[1] == 59 and second[1] == 58  # NOSCRIPT answered by loading it again
        await store.close()

    run(go())


def test_outage_falls_back_to_local_logged_once_and_reconnects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def go(srv: RedisServer) -> None:
        limits = build_limits(settings(srv.url, IIR_RATE_LIMIT_RPM_PER_KEY="1000"))
        assert isinstance(limits, SharedLimits)
        await limits.start()
        await limits.check_key("key-outage")
        before = metrics.STATE_FALLBACKS._value.get()
        srv.kill()
        for _ in range(5):  # answered by this box's own limiter, no error, no wait
            headers = await limits.check_key("key-outage")
            assert dict(headers)["x-ratelimit-limit-requests"] == "1000"
        assert limits.down
        assert metrics.STATE_FALLBACKS._value.get() - before == 5
        assert metrics.STATE_UP._value.get() == 0
        downs = [r for r in caplog.records if getattr(r, "event", None) == "state_down"]
        assert len(downs) == 1
        srv.start()
        for _ in range(100):
            if not limits.down:
                break
            await asyncio.sleep(0.1)
        assert not limits.down and metrics.STATE_UP._value.get() == 1
        await limits.check_key("key-outage")
        assert metrics.STATE_FALLBACKS._value.get() - before == 5  # shared again
        await limits.close()

    caplog.set_level(logging.WARNING, logger="iir.policy.limits")
    with redis_server() as srv:
        run(go(srv))


def test_outage_fails_closed_when_configured() -> None:
    async def go(srv: RedisServer) -> None:
        limits = build_limits(
            settings(srv.url, IIR_RATE_LIMIT_PER_IP="100", IIR_STATE_FAILURE="closed")
        )
        await limits.check_ip("192.0.2.1")
        srv.kill()
        for _ in range(3):
            with pytest.raises(ApiError) as caught:
                await limits.check_ip("192.0.2.1")
            assert caught.value.status == 503
            assert caught.value.code == "state_unavailable"
            assert dict(caught.value.headers)["retry-after"] == "1"
        await limits.close()

    with redis_server() as srv:
        run(go(srv))


def test_a_single_box_imports_no_fleet_client(tmp_path: Any) -> None:
    code = (
        "import sys; from iir.api.services import build; from iir.core.settings import "
        "load_settings; svc = build(load_settings({'IIR_API_KEY': 'k' * 32, "
        "'IIR_DATA_DIR': sys.argv[1]})); "
        "print(type(svc.limits).__name__, sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('redis', 'psycopg', 'psycopg_pool')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert out.stdout.split(None, 1) == ["Limits", "[]\n"]


def test_settings_name_a_bad_url_without_printing_it() -> None:
    from iir.core.settings import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_settings({"IIR_API_KEY": "k" * 32, "IIR_STATE_URL": "http://u:hunter2hunter2@x"})
    assert "IIR_STATE_URL" in str(caught.value) and "hunter2" not in str(caught.value)
    assert redacted("redis://u:hunter2@h:1/0") == "redis://u:***@h:1/0"


# --- peers ----------------------------------------------------------------------------------------


def peer_backend(*urls: str, own: set[str] | None = None) -> PeerBackend:
    s = load_settings(
        {"IIR_API_KEY": "k" * 32, "IIR_PEERS": ",".join(urls), "IIR_PEER_KEY": "p" * 32}
    )
    return PeerBackend(s, lambda: set(own or ()))


def status(*models: dict[str, Any]) -> dict[str, Any]:
    return {"object": "registry.status", "models": list(models), "hardware": {"gpus": []}}


def local(name: str, queue: int = 0, **kw: Any) -> dict[str, Any]:
    return {"id": name, "source": "local", "state": "ready", "queue": queue, **kw}


def test_a_peer_status_yields_only_its_own_ready_engine_models() -> None:
    backend = peer_backend("http://box2:8000")
    peer = backend.peers[0]
    peer.read_status(
        status(
            local("m1", queue=3, context_length=4096),
            local("m2", state="loading"),
            local("m3", shadowed=True),
            local("m@box9:1"),  # a qualified name is its own peer's: never relayed
            {"id": "m4", "source": "peer", "state": "ready"},  # one hop only
            {"id": "iir/echo", "source": "echo", "state": "ready"},
            local("x" * 300),
            local(7),  # type: ignore[arg-type]
        )
    )
    assert peer.models == {"m1": PeerModel(3, 4096)}
    with pytest.raises(ValueError):
        peer.read_status({"models": "nope"})
    many = status(*(local(f"m{i}") for i in range(5000)))
    peer.read_status(many)
    assert len(peer.models) == 1000  # bounded however much a peer lists


def test_names_are_plain_when_unique_and_qualified_where_they_clash() -> None:
    backend = peer_backend("http://box2:8000", "http://box3:8000", own={"shared"})
    b2, b3 = backend.peers
    for p in (b2, b3):
        p.alive = True
    b2.read_status(status(local("only-b2", queue=1), local("shared"), local("both", queue=4)))
    b3.read_status(status(local("both", queue=2)))
    cards = {c.id: c.boxes for c in backend.models()}
    assert cards == {
        "only-b2": ("box2:8000",),
        "shared@box2:8000": ("box2:8000",),  # this box serves "shared" itself
        "both": ("box2:8000", "box3:8000"),
        "both@box2:8000": ("box2:8000",),
        "both@box3:8000": ("box3:8000",),
    }
    # The least busy peer first; a qualified name pins its box.
    assert [p.box for p, _ in backend._choices("both")] == ["box3:8000", "box2:8000"]
    assert [p.box for p, _ in backend._choices("both@box2:8000")] == ["box2:8000"]
    assert backend.load("both").queue == 2
    b3.alive = False  # a dead peer is skipped and its models leave the list
    assert "both@box3:8000" not in {c.id for c in backend.models()}
    assert [p.box for p, _ in backend._choices("both")] == ["box2:8000"]
    with pytest.raises(ApiError) as caught:
        backend._choices("both@box3:8000")
    assert caught.value.status == 404
    assert backend.resolve("nothing") is None


def test_routing_weighs_queue_depth_then_prefers_this_box() -> None:
    def option(name: str, queue: int, peer: bool) -> Option:
        return Option(name, True, 3, 0.0, Load(queue=queue), 8192, peer=peer)

    own_busy, peer_idle = option("m", 5, False), option("m@box2:8000", 0, True)
    for key in (Option.quality_key, Option.cost_key):
        assert sorted([own_busy, peer_idle], key=key)[0] is peer_idle
        own_idle = option("m", 0, False)
        assert sorted([peer_idle, own_idle], key=key)[0] is own_idle


# --- jobs on PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as srv:
        yield srv


def two_boxes(url: str, lease: float = 30.0) -> tuple[PgJobStore, PgJobStore]:
    return PgJobStore(url, ttl=60, lease=lease), PgJobStore(url, ttl=60, lease=lease)


def test_boxes_starting_together_migrate_once(postgres: PostgresServer) -> None:
    url = postgres.create_database("migrate_once")

    async def go() -> None:
        stores = [PgJobStore(url, ttl=60) for _ in range(4)]
        await asyncio.gather(*(s.open() for s in stores))
        rows = await stores[0]._all("SELECT version FROM iir_schema ORDER BY version")
        assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
        await stores[0].db.run(lambda c: c.execute("INSERT INTO iir_schema (version) VALUES (99)"))
        for s in stores:
            await s.close()
        with pytest.raises(StoreError, match="newer than this IIR"):
            await PgJobStore(url, ttl=60).open()

    run(go())


def test_two_boxes_never_take_the_same_job(postgres: PostgresServer) -> None:
    url = postgres.create_database("skip_locked")

    async def go() -> None:
        a, b = two_boxes(url)
        await asyncio.gather(a.open(), b.open())
        ids = [new_job_id() for _ in range(40)]
        for i in ids:
            await a.insert(i, "owner", "chat", "m", b"{}")
        claims = await asyncio.gather(*(s.claim() for _ in range(25) for s in (a, b)))
        taken = [c.id for c in claims if c is not None]
        assert sorted(taken) == sorted(ids)  # each exactly once, none left, none twice
        assert all(c.attempts == 1 for c in claims if c is not None)
        assert await a.claim() is None
        for s in (a, b):
            await s.close()

    run(go())


def test_leases_renewal_lapse_and_attempts(postgres: PostgresServer) -> None:
    url = postgres.create_database("leases")

    async def go() -> None:
        a, b = two_boxes(url, lease=0.5)
        await asyncio.gather(a.open(), b.open())
        first, second = new_job_id(), new_job_id()
        await a.insert(first, "o", "chat", "m", b"{}")
        await a.insert(second, "o", "chat", "m", b"{}")
        assert (await a.claim(first)) is not None
        assert (await a.claim(second)) is not None
        # Box A renews the first job's lease and not the second's (as if it died under it).
        for _ in range(4):
            assert await a.renew([first]) == {first}
            await asyncio.sleep(0.2)
        requeued, failed = await b.recover(3, b'{"code": "job_crashed"}')
        assert (requeued, failed) == ([second], [])
        again = await b.claim()
        assert again is not None and again.id == second and again.attempts == 2
        assert not await a.finish(second, "succeeded", b"{}", None)  # B holds it now
        assert await a.renew([first, second]) == {first}
        assert await b.finish(second, "succeeded", b"{}", None)
        # A job whose box died under it as often as its attempts allow fails.
        await asyncio.sleep(0.7)
        requeued, failed = await b.recover(1, b'{"code": "job_crashed"}')
        assert (requeued, failed) == ([], [first])
        job = await b.get(first, "o")
        assert job is not None and job.status == "failed" and job.error == {"code": "job_crashed"}
        for s in (a, b):
            await s.close()

    run(go())


def test_cancel_owner_isolation_and_release(postgres: PostgresServer) -> None:
    url = postgres.create_database("cancel")

    async def go() -> None:
        a, b = two_boxes(url)
        await asyncio.gather(a.open(), b.open())
        running, pending = new_job_id(), new_job_id()
        await a.insert(running, "alice", "chat", "m", b"{}")
        await a.insert(pending, "alice", "chat", "m", b"{}")
        await a.claim(running)
        assert await b.get(running, "mallory") is None
        assert await b.cancel(running, "mallory") is None
        assert await b.cancel(running, "alice") == "running"  # cancelled on another box
        assert await a.renew([running]) == set()  # A learns at its next renewal
        assert await b.cancel(running, "alice") == "cancelled"
        claimed = await a.claim(pending)
        assert claimed is not None and claimed.attempts == 1
        assert await a.release([pending]) == 1  # a clean stop: back, no attempt counted
        job = await b.get(pending, "alice")
        assert job is not None and job.status == "pending" and job.attempts == 0
        assert (await a.counts())["cancelled"] == 1
        assert await a.usage() == {"alice": (1, 4)}
        for s in (a, b):
            await s.close()

    run(go())


def test_a_restarted_server_is_used_again_without_losing_a_row(postgres: PostgresServer) -> None:
    url = postgres.create_database("restart")

    async def go() -> None:
        store = PgJobStore(url, ttl=60)
        await store.open()
        ids = [new_job_id() for _ in range(3)]
        for i in ids:
            await store.insert(i, "o", "chat", "m", b"{}")
        postgres.restart()  # immediate shutdown, as in a crash, then recovery
        for i in ids:
            job = await store.get(i, "o")  # the dropped connections are replaced
            assert job is not None and job.status == "pending"
        postgres.stop()
        with pytest.raises(StoreUnavailable):
            await store.insert(new_job_id(), "o", "chat", "m", b"{}")
        postgres.start()
        await store.insert(new_job_id(), "o", "chat", "m", b"{}")
        assert (await store.counts())["pending"] == 4
        await store.close()

    run(go())


def test_stored_responses_are_shared_by_every_box(postgres: PostgresServer) -> None:
    """Two boxes' response stores over one database: what one stores, the other reads,
    updates, deletes; only for its owner; gone once expired (by the server's clock)."""
    url = postgres.create_database("responses")

    async def go() -> None:
        a_jobs, b_jobs = two_boxes(url)
        await asyncio.gather(a_jobs.open(), b_jobs.open())
        a = ResponseStore(PgResponses(a_jobs.db), ttl=60)
        b = ResponseStore(PgResponses(b_jobs.db), ttl=60)
        await asyncio.gather(a.start(), b.start())
        rid, job = new_response_id(), new_job_id()
        request = {"history": [], "input": [{"role": "user", "content": "hi"}]}
        await a.save("alice", rid, "m", "queued", request, {"id": rid, "status": "queued"}, job)
        got = await b.get("alice", rid)
        assert (got.owner, got.job_id, got.status, got.model) == ("alice", job, "queued", "m")
        assert got.request == request and got.response == {"id": rid, "status": "queued"}
        assert got.expires_at - got.created_at == pytest.approx(60, abs=1)
        for other in ("mallory", ""):
            with pytest.raises(ApiError) as err:
                await b.get(other, rid)
            assert err.value.status == 404
        await b.update(rid, "completed", {"id": rid, "status": "completed"})  # the job's box
        got = await a.get("alice", rid)
        assert got.status == "completed" and got.response["status"] == "completed"
        with pytest.raises(ApiError):
            await a.delete("mallory", rid)
        assert (await a.delete("alice", rid)).id == rid
        with pytest.raises(ApiError) as err:
            await b.get("alice", rid)
        assert err.value.status == 404
        # Expiry: a row past its time is neither read nor deleted, and the purge removes it.
        short = ResponseStore(PgResponses(b_jobs.db), ttl=0.2)
        old = new_response_id()
        await short.save("alice", old, "m", "completed", request, {"id": old})
        assert (await a.get("alice", old)).id == old
        await asyncio.sleep(0.3)
        with pytest.raises(ApiError):
            await a.get("alice", old)
        assert await a.table.purge() == 1
        assert await a.table.purge() == 0
        # The database down: a 503 to retry (its address not in it), and back when it is.
        kept = new_response_id()
        await a.save("alice", kept, "m", "completed", request, {"id": kept})
        postgres.stop()
        try:
            for attempt in (
                a.get("alice", kept),
                b.save("alice", new_response_id(), "m", "x", {}, {}),
            ):
                with pytest.raises(ApiError) as err:
                    await attempt
                assert err.value.status == 503 and err.value.code == "store_unavailable"
                assert str(postgres.port) not in err.value.message
        finally:
            postgres.start()
        assert (await b.get("alice", kept)).id == kept
        for store in (a, b):
            await store.stop()
        for jobs in (a_jobs, b_jobs):
            await jobs.close()

    run(go())


def test_iir_jobs_works_against_the_shared_store(postgres: PostgresServer) -> None:
    url = postgres.create_database("operator")
    job = new_job_id()

    async def seed() -> None:
        store = PgJobStore(url, ttl=60)
        await store.open()
        await store.insert(job, "o", "chat", "m", b'{"model": "m"}')
        await store.close()

    def iir(*args: str, db: str = url) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IIR_")}
        return subprocess.run(
            [IIR, "jobs", *args],
            env={**env, "IIR_JOB_STORE_URL": db},
            capture_output=True,
            text=True,
            timeout=60,
        )

    run(seed())
    listed = iir("list")
    assert listed.returncode == 0, listed.stderr
    assert [orjson.loads(line)["job_id"] for line in listed.stdout.splitlines()] == [job]
    shown = iir("show", job)
    assert shown.returncode == 0 and orjson.loads(shown.stdout)["request"] == {"model": "m"}
    assert iir("cancel", job).stdout.strip() == f"{job}: pending -> cancelled"
    assert iir("cancel", job).stdout.strip() == f"{job}: already cancelled"
    assert iir("show", new_job_id()).returncode == 1
    blank = iir("list", db=postgres.create_database("operator_blank"))
    assert blank.returncode == 2 and "start a box of this release once" in blank.stderr
