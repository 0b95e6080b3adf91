"""Async jobs against the same request made synchronously, on ``iir/echo``, in the same run.

One round is N requests at a client concurrency of 1 or 32 (threads on raw keep-alive
connections, ``bench/loadgen.py``, so the client costs little). For jobs, each request is submit,
then ``GET ?wait=`` (long-poll) until it has succeeded, so its latency is submit-to-complete.
Jobs per second is N over the round's time. The ratios to the synchronous baseline are in the
closing table (``bench/conftest.py``).
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import orjson
import pytest

from tests.harness import Server

from .conftest import record
from .loadgen import Conn, build_request

BODY = orjson.dumps(
    {
        "model": "iir/echo",
        "messages": [
            {"role": "user", "content": "a short question for the benchmark, about 16 tokens"}
        ],
    }
)
ROUNDS = {1: (40, 5), 32: (256, 3)}  # concurrency: (requests per round, rounds)


class _Client:
    def __init__(self, srv: Server) -> None:
        self.auth = {"Authorization": f"Bearer {srv.key}"}
        self.chat = build_request("POST", "/v1/chat/completions", BODY, self.auth)
        self.submit = build_request("POST", "/v1/async/chat/completions", BODY, self.auth)

    def sync_one(self, conn: Conn) -> float:
        t0 = time.perf_counter()
        status, _, body = conn.exchange(self.chat)
        assert status == 200, body
        return time.perf_counter() - t0

    def async_one(self, conn: Conn) -> float:
        t0 = time.perf_counter()
        status, _, body = conn.exchange(self.submit)
        assert status == 202, body
        poll = build_request(
            "GET",
            f"/v1/async/chat/completions/{orjson.loads(body)['job_id']}?wait=30",
            b"",
            self.auth,
        )
        while True:
            status, head, body = conn.exchange(poll)
            assert status == 200, body
            if b"x-iir-job-status: succeeded" in head:
                assert orjson.loads(body)["object"] == "chat.completion"
                return time.perf_counter() - t0
            assert b"x-iir-job-status: pending" in head or b"x-iir-job-status: running" in head


def _round(srv: Server, mode: str, conc: int, n: int, latencies: list[float]) -> None:
    """N requests from ``conc`` threads, each on its own keep-alive connection."""
    client = _Client(srv)
    one = client.sync_one if mode == "sync" else client.async_one
    todo = iter(range(n))
    lock = threading.Lock()

    def worker() -> None:
        conn = Conn(srv.port)
        try:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                took = one(conn)
                with lock:
                    latencies.append(took)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


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
