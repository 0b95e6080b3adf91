"""What the Responses and Messages APIs add over chat completions, on the same backend.

The same 1 KB prompt to ``iir/echo`` as ``/v1/chat/completions`` (the baseline), as
``/v1/responses`` (translated into the chat request and shaped back; once with ``store: false``,
once stored as by default, which adds a durable SQLite write per answer) and as ``/v1/messages``,
against one server in the same run, over raw keep-alive connections, in turn.
"""

from __future__ import annotations

from collections.abc import Iterator
from time import perf_counter
from typing import Any

import orjson
import pytest

from tests.harness import Server

from .conftest import record
from .corpus import chat_text
from .loadgen import Conn, build_request, percentile

TEXT_1KB = chat_text(1024, secrets=False)
BASELINE = "surfaces: /v1/chat/completions 1 KB"

BODIES: dict[str, tuple[str, dict[str, Any]]] = {
    BASELINE: (
        "/v1/chat/completions",
        {
            "model": "iir/echo",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": TEXT_1KB},
            ],
        },
    ),
    "surfaces: /v1/responses 1 KB, store false": (
        "/v1/responses",
        {"model": "iir/echo", "instructions": "Be brief.", "input": TEXT_1KB, "store": False},
    ),
    "surfaces: /v1/responses 1 KB, stored": (
        "/v1/responses",
        {"model": "iir/echo", "instructions": "Be brief.", "input": TEXT_1KB},
    ),
    "surfaces: /v1/messages 1 KB": (
        "/v1/messages",
        {
            "model": "iir/echo",
            "max_tokens": 1024,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": TEXT_1KB}],
        },
    ),
}


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with Server(env={"IIR_RATE_LIMIT_PER_IP": "0"}) as srv:
        yield srv


def test_surfaces_1kb_end_to_end(benchmark: Any, server: Server) -> None:
    """The four requests in turn, round after round, each on its own connection: a load spike
    on a shared machine then slows all four alike instead of whichever ran at the time."""
    auth = {"Authorization": f"Bearer {server.key}"}
    runs = []
    for name, (path, body) in BODIES.items():
        req = build_request("POST", path, orjson.dumps(body), auth)
        conn = Conn(server.port)
        status, _, _ = conn.exchange(req)
        assert status == 200, name
        for _ in range(100):
            conn.roundtrip(req)
        runs.append((name, conn, req, []))

    def rotation() -> None:
        for _, conn, req, times in runs:
            t0 = perf_counter()
            conn.roundtrip(req)
            times.append(perf_counter() - t0)

    benchmark.pedantic(rotation, rounds=2000, iterations=1)
    for name, conn, _, times in runs:
        record(
            name,
            None if name == BASELINE else BASELINE,
            p50_us=percentile(times, 0.5) * 1e6,
            p99_us=percentile(times, 0.99) * 1e6,
        )
        conn.close()
