"""What the Rust hot path costs one 1 KB chat request, measured two ways in one run.

1. In process: exactly the calls the server makes per request (scrub the request, count the
   prompt's tokens, the per-IP, per-key and token-budget checks through
   ``iir.policy.limits``, settle the budget, scrub the answer) against the 50 µs goal.
2. End to end over loopback: IIR with every limit and the prompt-token cap enabled against IIR
   with them disabled (scrubbing is always on), in the same run.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import orjson
import pytest

from iir.backends.echo import EchoBackend
from iir.backends.registry import ModelRegistry
from iir.core.settings import Settings
from iir.core.types import Choice, Completion, Usage
from iir.policy import tokens
from iir.policy.limits import Limits
from iir.policy.scrub import Scrubber
from iir.service.pipeline import Pipeline
from tests.harness import Server

from .conftest import record
from .corpus import chat_text
from .loadgen import Conn, build_request, percentile

T = TypeVar("T")
TEXT_1KB = chat_text(1024, secrets=False)
BODY = {
    "model": "gpt-4o",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": TEXT_1KB}],
}


def now(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never suspends (the in-process limits), without a loop:
    the server awaits them, and an await of one that does not suspend costs what this does."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("the in-process limits suspended")


def test_hotpath_steps_for_a_1kb_request(benchmark) -> None:
    scrubber = Scrubber.from_environ({"OPENAI_API_KEY": "sk-proj-" + "a1B2" * 12})
    limits = Limits(
        Settings(
            api_keys=("k",),
            rate_limit_per_ip=10**9,
            rate_limit_rpm_per_key=10**9,
            rate_limit_tpm_per_key=10**9,
        )
    )
    tokens.warm_up()
    pipeline = Pipeline(ModelRegistry([EchoBackend()]), scrubber, limits=limits)

    def per_request() -> None:
        body, _ = scrubber.scrub(BODY)
        prompt = tokens.count_chat(body["messages"], "gpt-4o")
        now(limits.check_ip(limits.client("192.0.2.10", None)))
        now(limits.check_key("key-id"))
        now(limits.reserve_tokens("key-id", prompt + 256)).settle(prompt + 100)
        answer = Completion([Choice(0, TEXT_1KB[:400], "stop")], Usage(300, 100))
        pipeline._scrub_completion(answer)

    benchmark.pedantic(per_request, rounds=3000, iterations=1, warmup_rounds=100)
    data = benchmark.stats.stats.sorted_data
    record(
        "hot path steps, 1 KB request (in process)",
        p50_us=percentile(data, 0.5) * 1e6,
        p99_us=percentile(data, 0.99) * 1e6,
    )


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Server, Server]]:
    off = {"IIR_RATE_LIMIT_PER_IP": "0"}
    on = {
        "IIR_RATE_LIMIT_PER_IP": "1000000000",
        "IIR_RATE_LIMIT_RPM_PER_KEY": "1000000000",
        "IIR_RATE_LIMIT_TPM_PER_KEY": "1000000000",
        "IIR_MAX_PROMPT_TOKENS": "100000",
    }
    with Server(env=off) as a, Server(env=on) as b:
        yield a, b


@pytest.mark.parametrize("mode", ["limits off", "limits on"])
def test_chat_1kb_end_to_end(benchmark, servers: tuple[Server, Server], mode: str) -> None:
    srv = servers[0] if mode == "limits off" else servers[1]
    body = orjson.dumps({**BODY, "model": "iir/echo"})
    req = build_request(
        "POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {srv.key}"}
    )
    conn = Conn(srv.port)
    for _ in range(200):
        conn.roundtrip(req)
    benchmark.pedantic(conn.roundtrip, args=(req,), rounds=2000, iterations=1)
    data = benchmark.stats.stats.sorted_data
    base = None if mode == "limits off" else "iir chat 1 KB, limits off"
    record(
        f"iir chat 1 KB, {mode}",
        base,
        p50_us=percentile(data, 0.5) * 1e6,
        p99_us=percentile(data, 0.99) * 1e6,
    )
    conn.close()
