"""IIR's added latency on the remote-provider path, next to its baseline, in one run.

The same load generator (aiohttp, one pooled session) sends the same chat request straight to a
fake OpenAI-compatible upstream (``direct``) and through IIR to that upstream (``iir``, model
``openai/bench-model``), at concurrency 1 and 64; ``echo`` (IIR's built-in model, no upstream)
shows the floor of IIR's own HTTP path on the same machine. Each request's latency is recorded; the added
latency is IIR's percentile minus the direct percentile. Goal: ≤ 0.5 ms added at p50, ≤ 2 ms at
p99. Run: ``make bench PYTEST_ARGS=-k bench_providers`` (or ``pytest bench/bench_providers.py``).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from bench.conftest import record
from tests.harness import Server

REQUESTS = {1: 500, 64: 3000}
ROUNDS = 3
_direct: dict[int, list[float]] = {}


@pytest.fixture(scope="module")
def iir(fake_upstream: str) -> Iterator[Server]:
    env = {
        "OPENAI_API_KEY": "bench-upstream-key",
        "IIR_OPENAI_BASE_URL": fake_upstream,
        "IIR_RATE_LIMIT_PER_IP": "0",  # measure the proxy path, not the limiter refusing it
    }
    with Server(env=env) as srv:
        yield srv


def _cpu_seconds(root: int) -> float:
    """CPU time (user + system) of a process and its children, from /proc (Linux)."""
    total = 0.0
    pids = [root]
    children = Path(f"/proc/{root}/task/{root}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _load(
    url: str, headers: dict[str, str], body: bytes, concurrency: int, n: int
) -> tuple[list[float], float, list[float]]:
    lat: list[float] = []
    own: list[float] = []  # x-iir-overhead-ms of each answer (IIR's own time), when present
    left = n
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency + 4)) as s:

        async def one() -> None:
            t0 = time.perf_counter()
            async with s.post(url, data=body, headers=headers) as r:
                raw = await r.read()
                assert r.status == 200, raw[:200]
                if "x-iir-overhead-ms" in r.headers:
                    own.append(float(r.headers["x-iir-overhead-ms"]) / 1e3)
            lat.append(time.perf_counter() - t0)

        for _ in range(min(n, 2 * concurrency)):  # warm the pool and both servers
            await one()
        lat.clear()
        own.clear()

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return lat, wall, own


@pytest.mark.parametrize(
    ("concurrency", "target"),
    [(1, "direct"), (1, "iir"), (1, "echo"), (64, "direct"), (64, "iir"), (64, "echo")],
    ids=["c1-direct", "c1-iir", "c1-echo", "c64-direct", "c64-iir", "c64-echo"],
)
def test_provider_path(
    benchmark, fake_upstream: str, iir: Server, concurrency: int, target: str
) -> None:  # type: ignore[no-untyped-def]
    if target == "direct":
        url = fake_upstream + "/chat/completions"
        headers = {"authorization": "Bearer bench-upstream-key", "content-type": "application/json"}
        model = "bench-model"
    else:
        url = iir.url + "/v1/chat/completions"
        headers = {**iir.policy.auth, "content-type": "application/json"}
        # echo: IIR's own floor (HTTP, auth, validation, logging) with no upstream at all
        model = "openai/bench-model" if target == "iir" else "iir/echo"
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "Hello there"}]})
    n = REQUESTS[concurrency]
    lat: list[float] = []
    walls: list[float] = []

    cpu: list[float] = []
    own: list[float] = []
    assert iir.proc is not None

    def round_() -> None:
        c0 = _cpu_seconds(iir.proc.pid)  # type: ignore[union-attr]
        got, wall, mine = asyncio.run(_load(url, headers, body, concurrency, n))
        own.extend(mine)
        cpu.append(_cpu_seconds(iir.proc.pid) - c0)  # type: ignore[union-attr]
        lat.extend(got)
        walls.append(wall)

    benchmark.group = f"provider path c={concurrency} ({n} requests a round)"
    benchmark.pedantic(round_, rounds=ROUNDS, iterations=1)
    p50, p99 = _pct(lat, 0.50), _pct(lat, 0.99)
    rps = n * len(walls) / sum(walls)
    info = benchmark.extra_info
    info.update(p50_ms=p50 * 1e3, p99_ms=p99 * 1e3, mean_ms=statistics.fmean(lat) * 1e3, rps=rps)
    # IIR's CPU per request (includes the warm-up requests; none for the direct baseline)
    per_req_cpu = sum(cpu) / (len(cpu) * (n + min(n, 2 * concurrency))) * 1e6
    info.update(iir_cpu_us_per_request=per_req_cpu)
    values = {"p50_us": p50 * 1e6, "p99_us": p99 * 1e6, "rps": rps}
    if target != "direct":
        values["iir_cpu_us"] = per_req_cpu
    if own:
        values["own_p50_us"] = _pct(own, 0.5) * 1e6  # x-iir-overhead-ms: IIR's own time
        values["own_p99_us"] = _pct(own, 0.99) * 1e6
    if target == "direct":
        _direct[concurrency] = lat
    elif target == "iir" and concurrency in _direct:
        base = _direct[concurrency]
        values["added_p50_us"] = (p50 - _pct(base, 0.50)) * 1e6
        values["added_p99_us"] = (p99 - _pct(base, 0.99)) * 1e6
    info.update(values)
    baseline = f"providers c={concurrency} direct" if target != "direct" else None
    record(f"providers c={concurrency} {target}", baseline, **values)
