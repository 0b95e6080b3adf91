"""Routing decision latency: features (Rust token count), classifier, policy and ordering.

Prompts of about 100 tokens, 1 KB and 4,000 tokens, decided by the real router over the test
policy. Each is measured next to its baseline, the request validation every chat request already
pays (``parse_chat_request`` of the same body). Goal: p99 <= 200 us for the 1 KB prompt.

Percentiles are given twice: wall-clock (``p50_us``/``p99_us``) and the thread's CPU time
(``cpu_p50_us``/``cpu_p99_us``). On a busy shared machine the wall-clock tail mostly measures
waiting for a core; CPU time is what the decision itself costs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest

from iir import _native
from iir.core.protocol import parse_chat_request
from tests.routing_eval import make_router

from .conftest import record

_SENTENCE = (
    "Our team is planning the next release and wants to understand the trade-offs between "
    "shipping early and polishing the onboarding flow. "
)


def _prompt(tokens: int) -> str:
    head = "Summarize the following notes for the steering committee:\n\n"
    text = head
    while _native.count_text(text, "o200k_base") < tokens:
        text += _SENTENCE
    return text


PROMPTS = {
    "100tok": _prompt(100),
    "1kb": (_SENTENCE * 8)[:1024],
    "4000tok": _prompt(4000),
}
ROUNDS = 3000


def _percentiles(fn: Callable[[], Any], rounds: int) -> dict[str, float]:
    for _ in range(200):
        fn()
    wall, cpu = [], []
    for _ in range(rounds):
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        fn()
        t1 = time.perf_counter_ns()
        cpu.append(time.thread_time_ns() - c0)
        wall.append(t1 - t0)
    wall.sort()
    cpu.sort()
    return {
        "p50_us": wall[len(wall) // 2] / 1000,
        "p99_us": wall[int(len(wall) * 0.99)] / 1000,
        "cpu_p50_us": cpu[len(cpu) // 2] / 1000,
        "cpu_p99_us": cpu[int(len(cpu) * 0.99)] / 1000,
        "mean_us": statistics.fmean(wall) / 1000,
    }


@pytest.mark.parametrize("size", list(PROMPTS))
def test_route_decision(benchmark: Any, size: str) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": PROMPTS[size]}]}
    chat = parse_chat_request(body)
    router, _ = make_router("local-first")
    decision = router.decide(chat)
    assert decision.candidates

    base = _percentiles(lambda: parse_chat_request(body), ROUNDS)
    routed = _percentiles(lambda: router.decide(chat), ROUNDS)
    record(f"request validation {size} (baseline)", **base)
    record(f"route decision {size}", f"request validation {size} (baseline)", **routed)
    benchmark.extra_info.update({f"decision_{k}": round(v, 1) for k, v in routed.items()})
    benchmark.extra_info.update({f"baseline_{k}": round(v, 1) for k, v in base.items()})
    benchmark.extra_info["prompt_tokens"] = decision.features.prompt_tokens
    benchmark.extra_info["prompt_bytes"] = len(PROMPTS[size].encode())
    benchmark(router.decide, chat)
