"""Async jobs against the same request made synchronously, on ``iir/echo``, in the same run.

One round is N requests at a client concurrency of 1 or 32. For jobs, each request is submit,
then ``GET ?wait=`` (long-poll) until it has succeeded, so its latency is submit-to-complete.
Jobs per second is N over the round's time. The ratios to the synchronous baseline are in the
closing table (``bench/conftest.py``).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx
import pytest

from tests.harness import Server

from .conftest import record

BODY = {
    "model": "iir/echo",
    "messages": [
        {"role": "user", "content": "a short question for the benchmark, about 16 tokens"}
    ],
}
ROUNDS = {1: (40, 5), 32: (256, 3)}  # concurrency: (requests per round, rounds)


async def _sync_one(c: httpx.AsyncClient) -> float:
    t0 = time.perf_counter()
    r = await c.post("/v1/chat/completions", json=BODY)
    assert r.status_code == 200, r.text
    return time.perf_counter() - t0


async def _async_one(c: httpx.AsyncClient) -> float:
    t0 = time.perf_counter()
    r = await c.post("/v1/async/chat/completions", json=BODY)
    assert r.status_code == 202, r.text
    url = f"/v1/async/chat/completions/{r.json()['job_id']}?wait=30"
    while True:
        got = await c.get(url)
        status = got.headers.get("x-iir-job-status")
        if status == "succeeded":
            assert got.json()["object"] == "chat.completion"
            return time.perf_counter() - t0
        assert status in ("pending", "running"), got.text


def _round(srv: Server, mode: str, conc: int, n: int, latencies: list[float]) -> None:
    one = _sync_one if mode == "sync" else _async_one

    async def main() -> None:
        limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
        async with httpx.AsyncClient(
            base_url=srv.url, headers=srv.auth, limits=limits, timeout=60
        ) as c:
            todo = iter(range(n))

            async def worker() -> None:
                for _ in todo:
                    latencies.append(await one(c))

            await asyncio.gather(*(worker() for _ in range(conc)))

    asyncio.run(main())


@pytest.mark.parametrize("conc", list(ROUNDS))
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_jobs_vs_sync(benchmark: Any, iir_server: Server, mode: str, conc: int) -> None:
    n, rounds = ROUNDS[conc]
    latencies: list[float] = []
    benchmark.group = f"echo, concurrency {conc}"
    benchmark.extra_info["requests_per_round"] = n
    benchmark.pedantic(
        _round, args=(iir_server, mode, conc, n, latencies), rounds=rounds, iterations=1
    )
    assert len(latencies) == n * rounds
    lat = sorted(latencies)
    name = f"jobs {mode} c={conc}"
    record(
        name,
        f"jobs sync c={conc}" if mode == "async" else None,
        rps=n / benchmark.stats.stats.median,
        p50_us=statistics.median(lat) * 1e6,
        p95_us=lat[int(len(lat) * 0.95) - 1] * 1e6,
    )
