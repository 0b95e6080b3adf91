"""Benchmarks of the Rust hot path, each next to its baseline in the same run.

Run: ``.venv/bin/pytest bench/bench_native.py --benchmark-only``
(``--benchmark-json=out.json`` then ``python -m bench.report out.json`` prints the ratio table).
"""

from __future__ import annotations

import itertools
import json
import random
import re
import time
from collections.abc import Callable

import pytest
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from bench.conftest import record
from bench.corpus import chat_text
from bench.py_scrubber import PyScrubber
from iir import _native
from iir.policy.ratelimit import RateLimiter
from iir.policy.scrub import RuleSet, Scrubber, rules_table_text
from iir.policy.tokens import count_text
from tests.harness import REPO
from tests.test_scrub_linear import HOSTILE
from tests.tiktoken_offline import reference

SIZES = {"1KB": 1024, "10KB": 10 * 1024, "1MB": 1024 * 1024}
SECRETS = ["env-openai-value-7Hq2", "iir-admin-4f1d9c2b", "provider-key-Zx81kq0p"]
RUST = Scrubber(SECRETS)

#: The families the scrubber knew before the rule table (about thirty token formats and the
#: generic forms): the same engine with only these is the baseline of the full table.
BEFORE_TABLE = {
    *("age_secret_key", "anthropic_key", "aws_access_key_id", "aws_secret_key"),
    *("databricks_token", "digitalocean_token", "github_app_token", "github_fine_grained_pat"),
    *("github_oauth", "github_pat", "github_refresh_token", "gitlab_pat", "google_api_key"),
    *("google_oauth_token", "groq_key", "huggingface_token", "jwt", "linear_key", "npm_token"),
    *("openai_key", "openrouter_key", "perplexity_key", "pypi_token", "replicate_token"),
    *("sendgrid_key", "shopify_token", "slack_bot_token", "slack_user_token", "slack_webhook"),
    *("stripe_secret_key", "twilio_key", "vault_service_token", "xai_key"),
}
_GENERIC_KINDS = ("assignment", "url_password", "basic_auth", "bearer", "pem")


def _table_before() -> RuleSet:
    """The rule table cut down to :data:`BEFORE_TABLE` and the generic forms."""
    head, *entries = re.split(r"(?m)^\[\[rule\]\]\n", rules_table_text())
    keep = [
        e
        for e in entries
        if re.search(r'(?m)^id = "([a-z0-9_]+)"', e)[1] in BEFORE_TABLE  # type: ignore[index]
        or re.search(rf'(?m)^kind = "(?:{"|".join(_GENERIC_KINDS)})"', e)
    ]
    return RuleSet.from_table(head + "".join(f"[[rule]]\n{e}" for e in keep))


BEFORE_RULES = _table_before()
BEFORE = _native.Scrubber(SECRETS, [BEFORE_RULES])
#: The pure-Python baseline runs the rules before the table (the full table on `re` would
#: measure only how slow 300 separate searches are).
PYTHON = PyScrubber(SECRETS, BEFORE_RULES.patterns())
TEXTS = {
    (size, secrets): chat_text(n, secrets) for size, n in SIZES.items() for secrets in (False, True)
}


def _check_same(text: str) -> None:
    """The Python baseline agrees with the native engine on the same rules, and the full table
    redacts at least what they do."""
    before, python = BEFORE.scrub_text(text), PYTHON.scrub_text(text)
    assert before == python, "baseline and native scrubbers disagree"
    assert sum(RUST.scrub_text(text)[1].values()) >= sum(before[1].values())


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


def _interleaved(fns: list[Callable[[str], object]], text: str, rounds: int) -> list[float]:
    """Best time of each function, the functions taking turns round after round: on a shared
    machine, other work then disturbs each about equally (one after the other, a busy spell
    lands on one of them)."""
    reps = max(1, 200_000 // len(text))
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(reps):
                fn(text)
            best[i] = min(best[i], (time.perf_counter() - t0) / reps)
    return best


@pytest.mark.parametrize("secrets", [False, True], ids=["clean", "secrets"])
@pytest.mark.parametrize("size", ["1KB", "1MB"])
@pytest.mark.parametrize("impl", ["native"])
def test_scrub_full_table(benchmark, impl: str, size: str, secrets: bool) -> None:
    """The full rule table next to the rules before it (the same engine), in the same run: the
    table may cost at most 1.5x (docs/scrubbing.md). The ratio is of the best of interleaved
    rounds; the benchmark's own figures are the full table's."""
    text = TEXTS[(size, secrets)]
    benchmark.group = f"scrub {size} {'with' if secrets else 'without'} secrets, full rule table"
    before, full = _interleaved([BEFORE.scrub_text, RUST.scrub_text], text, rounds=30)
    benchmark.extra_info.update(before_table_us=before * 1e6, ratio=full / before)
    if size == "1MB":
        benchmark.pedantic(RUST.scrub_text, args=(text,), rounds=5, iterations=1)
    else:
        benchmark(RUST.scrub_text, text)
    name = f"scrub {size} {'secrets' if secrets else 'clean'}"
    record(f"{name}, rules before the table", None, best_us=before * 1e6)
    record(f"{name}, full table", f"{name}, rules before the table", best_us=full * 1e6)


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
