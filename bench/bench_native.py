"""Benchmarks of the Rust hot path, each next to its baseline in the same run.

Run: ``.venv/bin/pytest bench/bench_native.py --benchmark-only``
(``--benchmark-json=out.json`` then ``python -m bench.report out.json`` prints the ratio table).
"""

from __future__ import annotations

import itertools
import json
import random

import pytest
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from bench.conftest import record
from bench.corpus import chat_text
from bench.py_scrubber import PyScrubber
from iir.policy.ratelimit import RateLimiter
from iir.policy.scrub import Scrubber
from iir.policy.tokens import count_text
from tests.harness import REPO
from tests.test_scrub_linear import HOSTILE
from tests.tiktoken_offline import reference

SIZES = {"1KB": 1024, "10KB": 10 * 1024, "1MB": 1024 * 1024}
SECRETS = ["env-openai-value-7Hq2", "iir-admin-4f1d9c2b", "provider-key-Zx81kq0p"]
RUST = Scrubber(SECRETS)
PYTHON = PyScrubber(SECRETS)
TEXTS = {
    (size, secrets): chat_text(n, secrets) for size, n in SIZES.items() for secrets in (False, True)
}


def _check_same(text: str) -> None:
    rust, python = RUST.scrub_text(text), PYTHON.scrub_text(text)
    assert rust == python, "baseline and native scrubbers disagree"


@pytest.mark.parametrize("secrets", [False, True], ids=["clean", "secrets"])
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("impl", ["native", "python_re"])
def test_scrub(benchmark, impl: str, size: str, secrets: bool) -> None:
    text = TEXTS[(size, secrets)]
    _check_same(text)
    benchmark.group = f"scrub {size} {'with' if secrets else 'without'} secrets"
    fn = RUST.scrub_text if impl == "native" else PYTHON.scrub_text
    if size == "1MB":
        result = benchmark.pedantic(fn, args=(text,), rounds=5, iterations=1)
    else:
        result = benchmark(fn, text)
    assert (result[1] != {}) == secrets


#: 1 MB of each hostile family (tests/test_scrub_linear.py), and of clean text as the baseline.
HOSTILE_1MB = {
    "clean text": TEXTS[("1MB", False)],
    **{
        name: (unit * (SIZES["1MB"] // len(unit) + 1))[: SIZES["1MB"]]
        for name, unit in HOSTILE.items()
    },
}


@pytest.mark.parametrize("family", list(HOSTILE_1MB))
def test_scrub_hostile_1mb(benchmark, family: str) -> None:
    """Every hostile family costs a bounded multiple of clean text per byte (the summary gives
    each as a ratio to clean text)."""
    benchmark.group = "scrub 1MB, hostile families next to clean text"
    benchmark.extra_info["impl"] = "native"
    text = HOSTILE_1MB[family]
    benchmark.pedantic(RUST.scrub_text, args=(text,), rounds=5, iterations=1, warmup_rounds=1)
    if benchmark.stats:
        base = None if family == "clean text" else "scrub 1 MB clean text"
        stats = benchmark.stats.stats
        # The min as well: on a busy machine the median of five rounds is mostly waiting.
        record(f"scrub 1 MB {family}", base, min_ms=stats.min * 1e3, median_ms=stats.median * 1e3)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("impl", ["native", "tiktoken"])
def test_count_tokens(benchmark, impl: str, size: str) -> None:
    text = TEXTS[(size, False)]
    enc, _ = reference("o200k_base")
    assert count_text(text) == len(enc.encode_ordinary(text))
    benchmark.group = f"tokens o200k {size}"
    if impl == "native":
        fn = count_text
    else:

        def fn(t: str) -> int:
            return len(enc.encode_ordinary(t))

    if size == "1MB":
        benchmark.pedantic(fn, args=(text,), rounds=5, iterations=1)
    else:
        benchmark(fn, text)


def _varied_texts(n: int = 256, size: int = 1024) -> list[str]:
    """``n`` different texts of about ``size`` bytes, words drawn from the routing evaluation
    prompts (several languages): the native counter remembers recent pieces, so counting one
    text over and over would flatter it."""
    words: list[str] = []
    for line in (REPO / "tests" / "data" / "routing_cases.jsonl").read_text().splitlines():
        words += json.loads(line)["prompt"].split()
    rng = random.Random(11)
    texts = []
    for _ in range(n):
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < size:
            parts.append(rng.choice(words))
        texts.append(" ".join(parts))
    return texts


VARIED = _varied_texts()


@pytest.mark.parametrize("impl", ["native", "tiktoken"])
def test_count_tokens_varied_texts(benchmark, impl: str) -> None:
    enc, _ = reference("o200k_base")
    assert all(count_text(t) == len(enc.encode_ordinary(t)) for t in VARIED)
    benchmark.group = "tokens o200k 1KB, 256 different texts in turn"
    texts = itertools.cycle(VARIED)
    if impl == "native":

        def fn() -> int:
            return count_text(next(texts))

    else:

        def fn() -> int:
            return len(enc.encode_ordinary(next(texts)))

    benchmark(fn)


KEYS = [f"10.0.{i // 256}.{i % 256}" for i in range(1000)]


@pytest.mark.parametrize("keys", ["one_key", "1000_keys"])
@pytest.mark.parametrize("impl", ["native_gcra", "limits_moving_window", "limits_fixed_window"])
def test_ratelimit_check(benchmark, impl: str, keys: str) -> None:
    benchmark.group = f"ratelimit check {keys}"
    cycle = itertools.cycle(KEYS if keys == "1000_keys" else KEYS[:1])
    if impl == "native_gcra":
        limiter = RateLimiter(10**9)
        check = limiter.check

        def run() -> bool:
            return check(next(cycle)).allowed

    else:
        strategy = (
            MovingWindowRateLimiter if impl == "limits_moving_window" else FixedWindowRateLimiter
        )
        lim = strategy(MemoryStorage())
        item = RateLimitItemPerMinute(10**9)
        hit = lim.hit

        def run() -> bool:
            return hit(item, next(cycle))

    assert benchmark(run)
