"""The upstream policy's parts on their own: breaker states, SSE framing, Retry-After, messages."""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from iir.backends.providers.anthropic import StreamTranslator
from iir.backends.providers.client import (
    CLOSED,
    HALF_OPEN,
    MAX_SSE_LINE,
    OPEN,
    CircuitBreaker,
    TooLarge,
    _retry_after,
    _sse_events,
    upstream_message,
)
from iir.core.errors import ApiError
from iir.core.types import Delta, Usage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(
        "unit", window=10, min_requests=4, failure_rate=0.5, open_seconds=5, clock=clock
    )


def test_breaker_needs_enough_requests_and_failures() -> None:
    clock = Clock()
    b = breaker(clock)
    for ok in (False, True, True):
        b.record(ok)
    assert b.state == CLOSED  # 3 attempts: below the minimum
    b.record(True)
    assert b.state == CLOSED  # 1 of 4 failed
    b.record(False)
    assert b.state == CLOSED  # 2 of 5
    b.record(False)
    assert b.state == OPEN  # 3 of 6: the 50 % threshold
    with pytest.raises(ApiError) as err:
        b.check()
    assert err.value.status == 503 and ("retry-after", "5") in err.value.headers


def test_breaker_forgets_outside_the_window() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.record(False)
    clock.now += 11
    b.record(False)
    assert b.state == CLOSED  # the three old failures left the window


def test_breaker_half_open_lets_one_probe_through() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(4):
        b.record(False)
    clock.now += 5
    b.check()  # the probe
    assert b.state == HALF_OPEN
    with pytest.raises(ApiError):
        b.check()  # a second request while the probe runs fails fast
    b.record(None)  # the probe was cancelled: it says nothing, another may go
    b.check()
    b.record(True)
    assert b.state == CLOSED
    b.check()


def test_breaker_failed_probe_reopens() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(4):
        b.record(False)
    clock.now += 5
    b.check()
    b.record(False)
    assert b.state == OPEN
    with pytest.raises(ApiError):
        b.check()


def test_retry_after_forms() -> None:
    assert _retry_after("3") == 3.0
    assert _retry_after("0.5") == 0.5
    assert _retry_after("-2") == 0.0
    assert _retry_after(None) is None
    assert _retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    got = _retry_after(later)
    assert got is not None and 25 <= got <= 31


def test_upstream_message_shapes() -> None:
    assert upstream_message(b'{"error": {"message": "bad model", "type": "x"}}') == "bad model"
    assert upstream_message(b'{"type": "error", "error": {"type": "t", "message": "m"}}') == "m"
    assert upstream_message(b'{"detail": "nope"}') == "nope"
    assert upstream_message(b'{"error": "plain"}') == "plain"
    assert upstream_message(b"<html>gateway</html>") == "<html>gateway</html>"
    assert upstream_message(b"") == "no message"


class _Reader:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            yield c


def parse(chunks: list[bytes], max_line: int = MAX_SSE_LINE) -> list[tuple[str, bytes]]:
    async def run() -> list[tuple[str, bytes]]:
        return [e async for e in _sse_events(_Reader(chunks), max_line)]  # type: ignore[arg-type]

    return asyncio.run(run())


def test_sse_line_over_the_cap_ends_the_stream() -> None:
    line = b"data: " + b"x" * 994  # 1000 bytes
    ok = [line[i : i + 64] for i in range(0, len(line), 64)] + [b"\r\n\r\n"]
    assert parse(ok, max_line=1001) == [("message", b"x" * 994)]
    endless = [b'data: {"a":1}\n\n'] + [b"x" * 64] * 100
    with pytest.raises(TooLarge):
        parse(endless, max_line=1000)
    # a cap that is not reached leaves the tail as the last event
    assert parse(endless[:3], max_line=1000) == [("message", b'{"a":1}')]


def _per_byte(chunks: list[bytes]) -> float:
    """Seconds per byte of parsing ``chunks``: the best of three runs, garbage collector off."""
    size = sum(map(len, chunks))
    best = float("inf")
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            t0 = time.perf_counter()
            parse(chunks, max_line=1 << 30)
            best = min(best, time.perf_counter() - t0)
    finally:
        gc.enable()
    return best / size


@pytest.mark.parametrize(
    "family",
    [
        "one line growing in small chunks",
        "many short lines in one chunk",
    ],
)
def test_sse_parsing_is_linear(family: str) -> None:
    """The cost per byte at 256 KB and 1 MB stays within a constant factor of the cost at 64 KB
    (re-slicing a growing line, or the rest of a chunk after each line, was quadratic)."""

    def wire(n: int) -> list[bytes]:
        if family.startswith("one line"):
            body = b"data: " + b"x" * n + b"\n\n"
            return [body[i : i + 256] for i in range(0, len(body), 256)]
        return [b"data: 1\n\n" * (n // 9)]

    first = _per_byte(wire(64 * 1024))
    for n in (256 * 1024, 1024 * 1024):
        cost = _per_byte(wire(n))
        if cost > 6 * first:  # measured again before it counts: the box is shared
            first = min(first, _per_byte(wire(64 * 1024)))
            cost = min(cost, _per_byte(wire(n)))
        assert cost <= 6 * first, (family, n, cost, first)


def test_sse_framing_details() -> None:
    body = (
        b": keep-alive comment\r\n\r\n"
        b'event: message_start\r\ndata: {"a":1}\r\n\r\n'
        b"id: 7\ndata: line one\ndata: line two\n\n"
        b"data:no-space\n\n"
        b"data: [DONE]"  # last event without the closing blank line
    )
    assert parse([body]) == [
        ("message_start", b'{"a":1}'),
        ("message", b"line one\nline two"),
        ("message", b"no-space"),
        ("message", b"[DONE]"),
    ]


events = st.lists(
    st.tuples(
        st.sampled_from(["message", "ping", "content_block_delta"]),
        st.text(
            st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40
        ),
    ),
    max_size=8,
)


@given(events=events, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10))
def test_sse_events_survive_any_chunking(events: list[tuple[str, str]], cuts: list[int]) -> None:
    wire = b"".join(
        (b"" if ev == "message" else f"event: {ev}\n".encode())
        + b"data: "
        + orjson.dumps(txt)
        + b"\n\n"
        for ev, txt in events
    )
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    chunks = [wire[a:b] for a, b in itertools.pairwise(points)]
    got = parse(chunks)
    assert [(e, orjson.loads(d)) for e, d in got] == events


def test_anthropic_translator_ignores_what_has_no_counterpart() -> None:
    tr = StreamTranslator()

    def feed(obj: dict[str, object]) -> list[Delta | Usage]:
        return tr.feed(str(obj["type"]), orjson.dumps(obj))

    assert feed({"type": "message_start", "message": {"usage": {"input_tokens": 5}}}) == []
    assert (
        feed(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": ""},
            }
        )
        == []
    )
    assert (
        feed(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "hm"},
            }
        )
        == []
    )
    assert (
        feed(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": "s"},
            }
        )
        == []
    )
    assert feed({"type": "ping"}) == []
    assert feed({"type": "some_future_event"}) == []
    assert feed(
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": "Hi"}}
    ) == [Delta(content="Hi")]
    assert feed(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "refusal"},
            "usage": {"output_tokens": 3},
        }
    ) == [Delta(finish_reason="content_filter")]
    (usage,) = feed({"type": "message_stop"})
    assert isinstance(usage, Usage) and (usage.prompt_tokens, usage.completion_tokens) == (5, 3)
    with pytest.raises(ApiError) as err:
        tr.feed("message", b"{broken")
    assert err.value.status == 502


_text = st.text(max_size=20)
_message = st.one_of(
    st.builds(lambda t: {"role": "system", "content": t}, _text),
    st.builds(lambda t: {"role": "developer", "content": t}, _text),
    st.builds(lambda t: {"role": "user", "content": t}, _text),
    st.builds(
        lambda t: {"role": "user", "content": [{"type": "text", "text": t}]},
        _text,
    ),
    st.builds(lambda t: {"role": "assistant", "content": t}, _text),
    st.builds(
        lambda args: {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": args}}
            ],
        },
        st.sampled_from(['{"a": 1}', "", "{broken", "[1]", "{}"]),
    ),
    st.builds(lambda t: {"role": "tool", "tool_call_id": "c1", "content": t}, _text),
)


@given(
    messages=st.lists(_message, min_size=1, max_size=8),
    stop=st.sampled_from([None, "x", ["a", "b"]]),
)
def test_anthropic_translation_never_breaks(
    messages: list[dict[str, object]], stop: object
) -> None:
    from iir.backends.providers import anthropic
    from iir.core.protocol import parse_chat_request

    chat = parse_chat_request({"model": "anthropic/m", "messages": messages, "stop": stop})
    try:
        body = orjson.loads(anthropic.build_request(chat, "m", False, 1000))
    except ApiError as err:  # refused: a clear 400 naming the field
        assert err.status == 400 and err.param
        return
    turns = body["messages"]
    assert turns and all(t["content"] for t in turns)
    assert all(a["role"] != b["role"] for a, b in itertools.pairwise(turns))  # alternating
    assert {t["role"] for t in turns} <= {"user", "assistant"}
    results = sum(1 for t in turns for b in t["content"] if b["type"] == "tool_result")
    assert results == sum(1 for m in messages if m["role"] == "tool")
    assert body["max_tokens"] == 1000
    if stop:
        assert body["stop_sequences"] == ([stop] if isinstance(stop, str) else stop)
