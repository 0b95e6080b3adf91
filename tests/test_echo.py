"""The echo model's own tokenizer: lossless, the same pieces as its one-regex definition, linear
in its input; and the cap on an echo answer's size (``n`` copies of the input)."""

from __future__ import annotations

import gc
import re
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iir.backends.echo import pieces

from .harness import Server
from .schemas import validate, validate_error

# The definition: a word of up to six characters or one symbol with the whitespace before it,
# or the whitespace at the very end.
_DEFINITION = re.compile(r"\s*(?:\w{1,6}|[^\w\s])|\s+$")


@given(st.text())
def test_pieces_give_the_text_back(text: str) -> None:
    assert "".join(pieces(text)) == text


@given(st.text(alphabet=st.sampled_from(list("ab1_é,.!  \t\n\u00a0"))) | st.text())
def test_pieces_follow_the_definition(text: str) -> None:
    assert pieces(text) == _DEFINITION.findall(text)


# --- linear time ------------------------------------------------------------------------------

SIZES = (10_000, 100_000, 1_000_000)
#: How much more a byte may cost at 100 KB and 1 MB than at 10 KB: linear code stays within about
#: 2 (allocation and caches); quadratic code costs 10x more per byte at each step up in size.
FACTOR = 6.0
#: How much more a byte of an adversarial family may cost than a byte of plain prose of the same
#: size: text of one-character pieces has five times as many pieces per byte as prose, while
#: quadratic code is thousands of times slower already at 10 KB.
VERSUS_CLEAN = 25.0
CLEAN = "The quick brown fox jumps over the lazy dog, again and again. "

FAMILIES: dict[str, Callable[[int], str]] = {
    "trailing whitespace": lambda n: "x" + " " * (n - 1),
    "whitespace only": lambda n: " " * n,
    "trailing no-break spaces": lambda n: "x" + "\u00a0" * (n - 1),
    "trailing newlines": lambda n: "x" + "\n\r\t" * (n // 3),
    "long runs between words": lambda n: ("w" + " " * 4999) * (n // 5000),
    "one long word": lambda n: "a" * n,
    "one symbol repeated": lambda n: "!" * n,
    "alternating": lambda n: "a " * (n // 2),
}


def _per_byte(text: str) -> float:
    """Seconds per character of ``pieces(text)``: the best of five batches, each repeated to
    last about 50 ms so the clock's resolution does not matter, with the garbage collector off
    (its pauses are not the tokenizer's). A call that alone takes seconds is not repeated."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        pieces(text)
        once = time.perf_counter() - t0
        if once > 2.0:
            return once / len(text)
        rounds = max(1, int(0.05 / max(once, 1e-6)))
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(rounds):
                pieces(text)
            best = min(best, time.perf_counter() - t0)
    finally:
        gc.enable()
    return best / (rounds * len(text))


@pytest.fixture(scope="module")
def clean_cost() -> dict[int, float]:
    return {n: _per_byte((CLEAN * (n // len(CLEAN) + 1))[:n]) for n in SIZES}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tokenizer_cost_per_byte_stays_flat(family: str, clean_cost: dict[int, float]) -> None:
    """Each size is checked before the next is tried, so quadratic code fails at 10 KB instead
    of running for hours at 1 MB."""
    first = None
    for n in SIZES:
        text = FAMILIES[family](n)
        assert "".join(pieces(text)) == text
        cost = _per_byte(text)
        assert cost <= VERSUS_CLEAN * clean_cost[n], (family, n, cost, clean_cost[n])
        if first is None:
            first = cost
        elif cost > FACTOR * first:  # measured again before it counts: the box is shared
            first = min(first, _per_byte(FAMILIES[family](SIZES[0])))
            cost = min(cost, _per_byte(text))
        assert cost <= FACTOR * first, (family, n, cost, first)


# --- through the server -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    with Server() as s:
        yield s


def _chat(text: str, **kw: object) -> dict[str, object]:
    return {"model": "iir/echo", "messages": [{"role": "user", "content": text}], **kw}


@pytest.mark.parametrize("text", ["x" + " " * 20_000, "x" + " " * 1_000_000, " " * 1_000_000])
def test_long_whitespace_is_answered(srv: Server, text: str) -> None:
    """These held the server's event loop for minutes: the answer comes back whole."""
    with srv.client() as c:
        r = c.post("/v1/chat/completions", json=_chat(text), headers=srv.auth)
    assert r.status_code == 200, r.text
    validate(r.json(), "CreateChatCompletionResponse")
    assert r.json()["choices"][0]["message"]["content"] == text


@pytest.mark.parametrize("stream", [False, True])
def test_n_copies_of_a_large_answer_are_refused(srv: Server, stream: bool) -> None:
    # 128 copies of 600 KB is 77 MB, over the 64 MiB default of IIR_MAX_ANSWER_BYTES
    body = _chat("word " * 120_000, n=128, stream=stream)
    with srv.client() as c:
        r = c.post("/v1/chat/completions", json=body, headers=srv.auth)
        assert r.status_code == 400, r.text[:300]
        validate_error(r.json())
        err = r.json()["error"]
        assert err["code"] == "answer_too_large" and err["param"] == "n"
        assert "IIR_MAX_ANSWER_BYTES" in err["message"]
        # the same text with fewer copies is answered
        small = c.post("/v1/chat/completions", json={**body, "n": 2}, headers=srv.auth)
        assert small.status_code == 200


@pytest.mark.parametrize(
    ("field", "value"), [("max_tokens", 2**63), ("max_completion_tokens", 2**24 + 1)]
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/async/chat/completions"])
def test_huge_output_budgets_are_400_naming_the_field(
    srv: Server, field: str, value: int, path: str
) -> None:
    with srv.client() as c:
        r = c.post(path, json=_chat("hi", **{field: value}), headers=srv.auth)
    assert r.status_code == 400, r.text
    validate_error(r.json())
    assert r.json()["error"]["param"] == field


def test_largest_output_budget_is_accepted(srv: Server) -> None:
    with srv.client() as c:
        r = c.post(
            "/v1/chat/completions", json=_chat("hi", max_tokens=2**24, n=128), headers=srv.auth
        )
        assert r.status_code == 200, r.text
        r = c.post(
            "/infer",
            json={"model": "iir/echo", "input": {"prompt": "hi"}, "max_tokens": 2**24 + 1},
            headers=srv.auth,
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens", r.text


def test_huge_budget_with_a_token_limit_is_a_clear_429() -> None:
    """``max_tokens`` at the bound times ``n`` overflowed nothing: the token limiter refuses it
    as larger than a minute's budget (it answered 500 for ``max_tokens`` near 2**63)."""
    with Server(env={"IIR_RATE_LIMIT_TPM_PER_KEY": "1000"}) as s, s.client() as c:
        r = c.post(
            "/v1/chat/completions", json=_chat("hi", max_tokens=2**24, n=128), headers=s.auth
        )
        assert r.status_code == 429, r.text
        validate_error(r.json())
        assert "exceed the limit of 1000 tokens per minute" in r.json()["error"]["message"]
        assert c.post("/v1/chat/completions", json=_chat("hi"), headers=s.auth).status_code == 200
