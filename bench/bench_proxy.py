"""The provider-proxy goals (docs/performance.md), each measured next to its baseline in one run.

The baseline is always the same fake OpenAI-compatible upstream (``bench/fake_upstream.py``)
served directly, measured by the same client in the same run, in rounds that alternate with the
rounds through IIR, so that a change in the machine's load hits both sides alike:

- ``c=1`` latency over one kept-alive raw socket, non-streamed and streamed: added p50 and p99,
  and for streams the added time to the first content frame;
- throughput at 32 connections (``wrk``): IIR's requests per second as a share of the upstream's;
- 512 concurrent streams from a slow upstream (one token every 20 ms): gaps between tokens as
  the client sees them, stalls (a gap 50 ms longer than the upstream's) and the added p99 gap;
- the serving worker's resident memory idle, after 1,000 and after 100,000 proxied requests.

Run: ``make bench PYTEST_ARGS="-k bench_proxy"`` (or ``pytest bench/bench_proxy.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from bench import fake_upstream, wrk
from bench.conftest import record
from bench.loadgen import Conn, build_request, percentile
from tests.harness import Server, free_port

ROUNDS = 4
PER_ROUND = 500
TOKEN_MS = 20.0
TOKENS = 50
STREAMS = 512
STALL_MS = 50.0
_CONTENT = re.compile(rb'"content":"[^"]')


def _body(model: str, stream: bool) -> bytes:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "Hello there"}],
    }
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


@pytest.fixture(scope="module")
def slow_upstream() -> Iterator[str]:
    """The fake upstream streaming one token every TOKEN_MS; yields its base URL."""
    with fake_upstream.running(free_port(), TOKEN_MS, TOKENS) as url:
        yield url


def _env(fast: str, slow: str | None = None) -> dict[str, str]:
    env = {
        "OPENAI_API_KEY": "bench-upstream-key",
        "IIR_OPENAI_BASE_URL": fast,
        "IIR_RATE_LIMIT_PER_IP": "0",  # measure the proxy path, not the limiter refusing it
        # 512 streams from one loopback address and one key: far past the in-flight caps a
        # production box keeps per client, which are not what this measures.
        "IIR_MAX_INFLIGHT_PER_KEY": "0",
        "IIR_MAX_INFLIGHT_PER_IP": "0",
    }
    if slow:
        env["IIR_OPENLLAMA_BASE_URL"] = slow
    return env


@pytest.fixture(scope="module")
def proxy(fake_upstream: str, slow_upstream: str) -> Iterator[Server]:
    with Server(env=_env(fake_upstream, slow_upstream)) as srv:
        yield srv


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


# --- c=1 latency --------------------------------------------------------------------------------


def _timed(conn: Conn, request: bytes, stream: bool) -> tuple[float, float]:
    """One request: (seconds to the whole answer, seconds to the first content frame)."""
    t0 = time.perf_counter()
    conn.sock.sendall(request)
    buf = b""
    first = 0.0
    while True:
        chunk = conn.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
        if stream and not first and _CONTENT.search(buf):
            first = time.perf_counter() - t0
        if (stream and buf.endswith(b"data: [DONE]\n\n")) or (
            stream and buf.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
        ):
            break
        if not stream and _complete_json(buf):
            break
    assert buf.startswith(b"HTTP/1.1 200"), buf[:300]
    return time.perf_counter() - t0, first


def _complete_json(buf: bytes) -> bool:
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return False
    m = re.search(rb"content-length:\s*(\d+)", buf[:head_end], re.I)
    assert m, buf[:300]
    return len(buf) >= head_end + 4 + int(m.group(1))


def _latency_round(
    port: int, request: bytes, stream: bool, n: int
) -> tuple[list[float], list[float]]:
    conn = Conn(port)
    try:
        for _ in range(50):
            _timed(conn, request, stream)
        whole, first = [], []
        for _ in range(n):
            w, f = _timed(conn, request, stream)
            whole.append(w)
            first.append(f)
        return whole, first
    finally:
        conn.close()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_added_latency_c1(benchmark, proxy: Server, fake_upstream: str, stream: bool) -> None:  # type: ignore[no-untyped-def]
    auth = {"Authorization": f"Bearer {proxy.key}"}
    direct_req = build_request(
        "POST",
        "/v1/chat/completions",
        _body("bench-model", stream),
        {"Authorization": "Bearer bench-upstream-key"},
    )
    iir_req = build_request(
        "POST", "/v1/chat/completions", _body("openai/bench-model", stream), auth
    )
    sides: dict[str, tuple[list[float], list[float]]] = {"direct": ([], []), "iir": ([], [])}

    def rounds() -> None:
        for _ in range(ROUNDS):
            for side, port, req in (
                ("direct", _port(fake_upstream), direct_req),
                ("iir", proxy.port, iir_req),
            ):
                whole, first = _latency_round(port, req, stream, PER_ROUND)
                sides[side][0].extend(whole)
                sides[side][1].extend(first)

    benchmark.group = "proxy c=1"
    benchmark.pedantic(rounds, rounds=1, iterations=1)
    kind = "stream" if stream else "json"
    values: dict[str, dict[str, float]] = {}
    for side, (whole, first) in sides.items():
        v = {"p50_us": percentile(whole, 0.5) * 1e6, "p99_us": percentile(whole, 0.99) * 1e6}
        if stream:
            v["ttft_p50_us"] = percentile(first, 0.5) * 1e6
        values[side] = v
    d, i = values["direct"], values["iir"]
    i["added_p50_us"] = i["p50_us"] - d["p50_us"]
    i["added_p99_us"] = i["p99_us"] - d["p99_us"]
    if stream:
        i["added_ttft_p50_us"] = i["ttft_p50_us"] - d["ttft_p50_us"]
    record(f"proxy {kind} c=1 direct", None, **d)
    record(f"proxy {kind} c=1 iir", f"proxy {kind} c=1 direct", **i)
    benchmark.extra_info.update(
        {f"{k}_{side}": v for side in values for k, v in values[side].items()}
    )


# --- throughput at 32 connections --------------------------------------------------------------


def test_throughput_c32(benchmark, proxy: Server, fake_upstream: str) -> None:  # type: ignore[no-untyped-def]
    runs: dict[str, list[float]] = {"direct": [], "iir": []}

    def rounds() -> None:
        for _ in range(2):
            out = wrk.run(
                _port(fake_upstream),
                "/v1/chat/completions",
                "POST",
                _body("bench-model", False),
                {"Authorization": "Bearer bench-upstream-key"},
                connections=32,
                seconds=4,
            )
            runs["direct"].append(out["rps"])
            out = wrk.run(
                proxy.port,
                "/v1/chat/completions",
                "POST",
                _body("openai/bench-model", False),
                proxy.auth,
                connections=32,
                seconds=4,
            )
            runs["iir"].append(out["rps"])

    benchmark.group = "proxy throughput c=32"
    benchmark.pedantic(rounds, rounds=1, iterations=1)
    direct = sum(runs["direct"]) / len(runs["direct"])
    iir = sum(runs["iir"]) / len(runs["iir"])
    record("proxy c=32 direct", None, rps=direct)
    record("proxy c=32 iir", "proxy c=32 direct", rps=iir, share_of_direct=iir / direct)
    benchmark.extra_info.update(direct_rps=runs["direct"], iir_rps=runs["iir"])


# --- 512 slow streams ---------------------------------------------------------------------------


class _StreamClient(asyncio.Protocol):
    """One streamed request on its own connection; notes when each content frame arrives."""

    def __init__(self, request: bytes, done: asyncio.Future[None]) -> None:
        self.request = request
        self.done = done
        self.buf = bytearray()
        self.seen = 0
        self.times: list[float] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buf += data
        count = self.buf.count(b'"content":" t')
        self.times.extend([now] * (count - self.seen))
        self.seen = count
        if b"data: [DONE]" in self.buf[-64:] and not self.done.done():
            self.done.set_result(None)
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed early: {bytes(self.buf[:200])!r}"))


async def _streams(port: int, request: bytes, n: int) -> list[list[float]]:
    loop = asyncio.get_running_loop()
    clients: list[_StreamClient] = []
    waits = []
    step = TOKEN_MS / 1000 / n  # spread the starts over one token's time, as real traffic is

    async def one(i: int) -> None:
        await asyncio.sleep(i * step)
        done: asyncio.Future[None] = loop.create_future()
        client = _StreamClient(request, done)
        clients.append(client)
        await loop.create_connection(lambda: client, "127.0.0.1", port)
        await asyncio.wait_for(done, 60)

    waits = [one(i) for i in range(n)]
    await asyncio.gather(*waits)
    return [c.times for c in clients]


def _gaps(times: list[list[float]]) -> list[float]:
    return [b - a for ts in times for a, b in itertools.pairwise(ts)]


def test_slow_streams_512(benchmark, proxy: Server, slow_upstream: str) -> None:  # type: ignore[no-untyped-def]
    import uvloop

    direct_req = build_request(
        "POST", "/v1/chat/completions", _body("bench-model", True), {"Connection": "close"}
    )
    iir_req = build_request(
        "POST",
        "/v1/chat/completions",
        _body("openllama/bench-model", True),
        {**proxy.auth, "Connection": "close"},
    )
    gaps: dict[str, list[float]] = {"direct": [], "iir": []}
    tokens: dict[str, int] = {"direct": 0, "iir": 0}

    def rounds() -> None:
        for _ in range(2):
            for side, port, req in (
                ("direct", _port(slow_upstream), direct_req),
                ("iir", proxy.port, iir_req),
            ):
                times = uvloop.run(_streams(port, req, STREAMS))
                tokens[side] += sum(map(len, times))
                gaps[side].extend(_gaps(times))

    benchmark.group = f"proxy {STREAMS} streams, {TOKEN_MS:.0f} ms a token"
    benchmark.pedantic(rounds, rounds=1, iterations=1)
    values: dict[str, dict[str, float]] = {}
    for side, g in gaps.items():
        assert tokens[side] == 2 * STREAMS * TOKENS, (side, tokens[side])
        values[side] = {
            "gap_p50_ms": percentile(g, 0.5) * 1e3,
            "gap_p99_ms": percentile(g, 0.99) * 1e3,
            "gap_max_ms": max(g) * 1e3,
            "stalls": float(sum(1 for x in g if x * 1e3 > TOKEN_MS + STALL_MS)),
        }
    d, i = values["direct"], values["iir"]
    i["added_gap_p99_ms"] = i["gap_p99_ms"] - d["gap_p99_ms"]
    record("proxy 512 streams direct", None, **d)
    record("proxy 512 streams iir", "proxy 512 streams direct", **i)
    benchmark.extra_info.update({f"{k}_{s}": v for s in values for k, v in values[s].items()})


# --- memory -------------------------------------------------------------------------------------


def _worker_rss_mb(srv: Server) -> float:
    """Resident memory of the serving worker (the largest child of ``iir serve``)."""
    assert srv.proc is not None
    pid = srv.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    best = 0
    for child in children:
        status = Path(f"/proc/{child}/status").read_text()
        m = re.search(r"VmRSS:\s+(\d+) kB", status)
        if m:
            best = max(best, int(m.group(1)))
    return best / 1024


def _wait_quiet(srv: Server) -> float:
    time.sleep(2)  # let the pool and the log writer settle
    return _worker_rss_mb(srv)


def test_worker_memory(benchmark, fake_upstream: str) -> None:  # type: ignore[no-untyped-def]
    """Idle after start-up; then warmed by a few seconds at the benchmark's concurrency (pools,
    buffers and the allocator's arenas grow to the peak once); then after 100,000 more
    requests. Flat means the last two agree: nothing grows with the number of requests."""
    body = _body("openai/bench-model", False)
    out: dict[str, float] = {}

    def run() -> None:
        with Server(env=_env(fake_upstream)) as srv:
            out["idle_mb"] = _wait_quiet(srv)
            wrk.run(srv.port, "/v1/chat/completions", "POST", body, srv.auth, 32, seconds=3)
            out["warm_mb"] = _wait_quiet(srv)
            done = 0
            while done < 100_000:
                got = wrk.run(
                    srv.port, "/v1/chat/completions", "POST", body, srv.auth, 32, seconds=5
                )
                done += int(got["requests"])
            out["requests"] = float(done)
            out["after_100k_mb"] = _wait_quiet(srv)

    benchmark.group = "proxy worker memory"
    benchmark.pedantic(run, rounds=1, iterations=1)
    out["growth_pct"] = (out["after_100k_mb"] / out["warm_mb"] - 1) * 100
    record("proxy worker memory", None, **out)
    benchmark.extra_info.update(out)
