"""The serving worker's resident memory every 50,000 proxied requests, to tell a leak (growth in
proportion to requests) from the allocator settling (growth in shrinking steps).

Same fake upstream, server and request as the memory row of ``bench_proxy.py``, load from
``wrk`` at 32 connections. Run: ``.venv/bin/python -m bench.memory_curve [steps]`` (default 6).
"""

from __future__ import annotations

import sys
import time

from bench import fake_upstream, wrk
from bench.bench_proxy import _body, _env, _worker_rss_mb
from tests.harness import Server, free_port

STEP = 50_000


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    port = free_port()
    body = _body("openai/bench-model", False)
    with fake_upstream.running(port), Server(env=_env(f"http://127.0.0.1:{port}/v1")) as srv:
        time.sleep(2)
        print(f"requests 0: {_worker_rss_mb(srv):.1f} MB", flush=True)
        done = 0
        for step in range(1, steps + 1):
            while done < step * STEP:
                got = wrk.run(
                    srv.port, "/v1/chat/completions", "POST", body, srv.auth, 32, seconds=5
                )
                done += int(got["requests"])
            time.sleep(2)  # let the pool and the log writer settle
            print(f"requests {done}: {_worker_rss_mb(srv):.1f} MB", flush=True)


if __name__ == "__main__":
    main()
