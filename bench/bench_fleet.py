"""What a fleet costs per request, next to a single box, in the same run.

The benchmark starts its own ``redis-server`` and PostgreSQL (``tests/fleet_servers.py``), as the
tests do. Rows (ratios in the closing table, ``bench/conftest.py``):

1. One per-key limit check (``Limits.check_key``), awaited on the server's event loop: in process
   (the baseline) and on Redis over loopback (one round trip, the GCRA script by digest).
2. A 1 KB chat request end to end with the per-IP, per-key and token limits on: in-process limits
   (the baseline) and Redis limits (three round trips per request).
3. One job submission (``JobPool.submit``: the row durable before it returns): SQLite (the
   baseline) and PostgreSQL over loopback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from iir.core.settings import load_settings
from iir.policy.limits import build_limits
from tests.fleet_servers import PostgresServer, RedisServer, postgres_server, redis_server
from tests.harness import Server

from .conftest import record
from .loadgen import Conn, build_request, percentile

CHECKS = 3000
BIG = str(10**9)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server(durable=True) as srv:  # fsync on, as SQLite's synced commits
        yield srv


def _limit_latencies(env: dict[str, str]) -> list[float]:
    async def go() -> list[float]:
        limits = build_limits(
            load_settings({"IIR_API_KEY": "k" * 40, "IIR_RATE_LIMIT_RPM_PER_KEY": BIG, **env})
        )
        await limits.start()
        out = []
        for i in range(CHECKS + 200):
            t0 = time.perf_counter()
            await limits.check_key("bench-key")
            if i >= 200:  # warm-up: connections made, script loaded
                out.append(time.perf_counter() - t0)
        await limits.close()
        return sorted(out)

    return asyncio.run(go())


@pytest.mark.parametrize("where", ["in process", "redis"])
def test_limit_check(benchmark, redis: RedisServer, where: str) -> None:
    env = {"IIR_STATE_URL": redis.url} if where == "redis" else {}
    data = benchmark.pedantic(_limit_latencies, args=(env,), rounds=1, iterations=1)
    base = None if where == "in process" else "limit check, in process"
    record(
        f"limit check, {where}",
        base,
        p50_us=percentile(data, 0.5) * 1e6,
        p99_us=percentile(data, 0.99) * 1e6,
    )


@pytest.fixture(scope="module")
def limit_servers(redis: RedisServer) -> Iterator[tuple[Server, Server]]:
    on = {
        "IIR_RATE_LIMIT_PER_IP": BIG,
        "IIR_RATE_LIMIT_RPM_PER_KEY": BIG,
        "IIR_RATE_LIMIT_TPM_PER_KEY": BIG,
    }
    with Server(env=on) as local, Server(env={**on, "IIR_STATE_URL": redis.url}) as shared:
        yield local, shared


@pytest.mark.parametrize("where", ["in process", "redis"])
def test_chat_with_limits(benchmark, limit_servers: tuple[Server, Server], where: str) -> None:
    srv = limit_servers[0] if where == "in process" else limit_servers[1]
    body = orjson.dumps(
        {
            "model": "iir/echo",
            "messages": [{"role": "user", "content": "x " * 512}],
        }
    )
    req = build_request(
        "POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {srv.key}"}
    )
    conn = Conn(srv.port)
    for _ in range(200):
        conn.roundtrip(req)
    benchmark.pedantic(conn.roundtrip, args=(req,), rounds=2000, iterations=1)
    conn.close()
    data = benchmark.stats.stats.sorted_data
    base = None if where == "in process" else "chat 1 KB, limits in process"
    record(
        f"chat 1 KB, limits {where}",
        base,
        p50_us=percentile(data, 0.5) * 1e6,
        p99_us=percentile(data, 0.99) * 1e6,
    )


def _submit_latencies(env: dict[str, str], data_dir: Path, n: int = 400) -> list[float]:
    from iir.service.jobs import JobPool
    from iir.store.factory import job_store

    async def go() -> list[float]:
        settings = load_settings({"IIR_API_KEY": "k" * 40, "IIR_DATA_DIR": str(data_dir), **env})
        store = job_store(settings)

        async def run(job_id: str, kind: str, request: dict) -> dict:
            return {}

        # No workers: only the submission (the durable insert) is measured.
        pool = JobPool(store, run, concurrency=1, queue_max=10**6)
        await store.open()
        out = []
        request = {"model": "iir/echo", "messages": [{"role": "user", "content": "x " * 256}]}
        for i in range(n + 50):
            t0 = time.perf_counter()
            await pool.submit("bench-owner", "chat", request)
            if i >= 50:
                out.append(time.perf_counter() - t0)
        await store.close()
        return sorted(out)

    return asyncio.run(go())


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
def test_job_submission(benchmark, postgres: PostgresServer, tmp_path: Path, where: str) -> None:
    env = {}
    if where == "postgresql":
        env["IIR_JOB_STORE_URL"] = postgres.create_database("bench_jobs")
    data = benchmark.pedantic(_submit_latencies, args=(env, tmp_path), rounds=1, iterations=1)
    base = None if where == "sqlite" else "job submission, sqlite"
    record(
        f"job submission, {where}",
        base,
        p50_us=percentile(data, 0.5) * 1e6,
        p99_us=percentile(data, 0.99) * 1e6,
    )
