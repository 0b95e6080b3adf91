"""Which async HTTP client to use for upstream calls: httpx vs aiohttp, same fake upstream.

Each round sends a batch of chat requests (JSON, and SSE read line by line) at concurrency 1 and
64 through one pooled client, as the provider backends do. The winner is the one IIR uses
(see README, "Remote providers").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import orjson
import pytest

BODY = orjson.dumps(
    {"model": "bench-model", "messages": [{"role": "user", "content": "Hello there"}]}
)
STREAM_BODY = orjson.dumps(
    {
        "model": "bench-model",
        "stream": True,
        "messages": [{"role": "user", "content": "Hello there"}],
    }
)
HEADERS = {"content-type": "application/json", "authorization": "Bearer bench"}
BATCH = 256


async def _httpx_json(c: httpx.AsyncClient, url: str) -> None:
    r = await c.post(url, content=BODY, headers=HEADERS)
    orjson.loads(r.content)


async def _httpx_sse(c: httpx.AsyncClient, url: str) -> None:
    async with c.stream("POST", url, content=STREAM_BODY, headers=HEADERS) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                orjson.loads(line[6:])


async def _aiohttp_json(c: aiohttp.ClientSession, url: str) -> None:
    async with c.post(url, data=BODY, headers=HEADERS) as r:
        orjson.loads(await r.read())


async def _aiohttp_sse(c: aiohttp.ClientSession, url: str) -> None:
    async with c.post(url, data=STREAM_BODY, headers=HEADERS) as r:
        async for line in r.content:
            if line.startswith(b"data: {"):
                orjson.loads(line[6:])


async def _batch(call: Callable[[], Awaitable[None]], concurrency: int) -> None:
    left = BATCH

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def _run(benchmark, lib: str, kind: str, concurrency: int, base: str) -> None:  # type: ignore[no-untyped-def]
    url = base + "/chat/completions"
    loop = asyncio.new_event_loop()

    async def make() -> object:
        if lib == "httpx":
            return httpx.AsyncClient(limits=httpx.Limits(max_connections=100))
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))

    client = loop.run_until_complete(make())
    fn = {
        ("httpx", "json"): _httpx_json,
        ("httpx", "sse"): _httpx_sse,
        ("aiohttp", "json"): _aiohttp_json,
        ("aiohttp", "sse"): _aiohttp_sse,
    }[(lib, kind)]

    def one_batch() -> None:
        loop.run_until_complete(_batch(lambda: fn(client, url), concurrency))  # type: ignore[arg-type]

    one_batch()  # warm the pool
    benchmark.extra_info["requests_per_round"] = BATCH
    benchmark.pedantic(one_batch, rounds=8, iterations=1)
    closer = client.aclose() if lib == "httpx" else client.close()  # type: ignore[attr-defined]
    loop.run_until_complete(closer)
    loop.close()


@pytest.mark.parametrize("concurrency", [1, 64])
@pytest.mark.parametrize("kind", ["json", "sse"])
@pytest.mark.parametrize("lib", ["httpx", "aiohttp"])
def test_client(benchmark, fake_upstream: str, lib: str, kind: str, concurrency: int) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = f"upstream-client {kind} c={concurrency}"
    _run(benchmark, lib, kind, concurrency, fake_upstream)
