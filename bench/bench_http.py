"""End-to-end HTTP benchmarks over loopback: IIR's routes against a bare Granian RSGI app.

Goal (foundation issue): the full IIR chat path keeps at least half the bare app's throughput and
adds under 0.5 ms at p50.
"""

from __future__ import annotations

import orjson
import pytest

from tests.harness import Server

from . import wrk
from .conftest import record
from .loadgen import Conn, build_request, percentile

CHAT = orjson.dumps(
    {
        "model": "iir/echo",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write one sentence about the sea and the sky at dawn."},
        ],
    }
)
STREAM = orjson.dumps({**orjson.loads(CHAT), "stream": True})


def _requests(srv: Server) -> dict[str, bytes]:
    auth = {"Authorization": f"Bearer {srv.key}"}
    return {
        "iir /health": build_request("GET", "/health"),
        "iir chat": build_request("POST", "/v1/chat/completions", CHAT, auth),
        "iir chat stream": build_request("POST", "/v1/chat/completions", STREAM, auth),
    }


def _latency(benchmark, port: int, request: bytes, name: str, baseline: str | None) -> None:
    conn = Conn(port)
    for _ in range(200):
        conn.roundtrip(request)  # warm up
    benchmark.pedantic(conn.roundtrip, args=(request,), rounds=3000, iterations=1)
    data = benchmark.stats.stats.sorted_data
    record(
        name + " c=1",
        baseline and baseline + " c=1",
        p50_us=percentile(data, 0.5) * 1e6,
        p99_us=percentile(data, 0.99) * 1e6,
    )
    conn.close()


def _throughput(
    benchmark,
    port: int,
    path: str,
    method: str,
    body: bytes,
    headers: dict[str, str],
    name: str,
    baseline: str | None,
) -> None:
    out: dict[str, float] = {}

    def run() -> None:
        out.update(wrk.run(port, path, method, body, headers, connections=16, seconds=3))

    benchmark.pedantic(run, rounds=1, iterations=1)
    record(name + " c=16", baseline and baseline + " c=16", **out)


def test_bare_latency(benchmark, bare_port: int) -> None:
    _latency(benchmark, bare_port, build_request("POST", "/", CHAT), "bare granian", None)


def test_bare_stream_latency(benchmark, bare_port: int) -> None:
    req = build_request("POST", "/stream", STREAM)
    _latency(benchmark, bare_port, req, "bare granian stream", None)


@pytest.mark.parametrize("name", ["iir /health", "iir chat", "iir chat stream"])
def test_iir_latency(benchmark, iir_server: Server, name: str) -> None:
    base = "bare granian stream" if "stream" in name else "bare granian"
    _latency(benchmark, iir_server.port, _requests(iir_server)[name], name, base)


def test_bare_throughput(benchmark, bare_port: int) -> None:
    _throughput(benchmark, bare_port, "/", "POST", CHAT, {}, "bare granian", None)


def test_bare_stream_throughput(benchmark, bare_port: int) -> None:
    _throughput(benchmark, bare_port, "/stream", "POST", STREAM, {}, "bare granian stream", None)


@pytest.mark.parametrize(
    ("name", "method", "body"),
    [("iir /health", "GET", b""), ("iir chat", "POST", CHAT), ("iir chat stream", "POST", STREAM)],
)
def test_iir_throughput(benchmark, iir_server: Server, name: str, method: str, body: bytes) -> None:
    path = "/health" if method == "GET" else "/v1/chat/completions"
    base = "bare granian stream" if "stream" in name else "bare granian"
    _throughput(benchmark, iir_server.port, path, method, body, iir_server.auth, name, base)
