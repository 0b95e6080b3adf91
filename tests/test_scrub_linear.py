"""The scrubber takes time linear in its input, on the hostile families of text too.

Each family is fed at 10 KB, 100 KB and 1 MB; the cost per byte at 1 MB must stay within a
constant factor of the cost per byte at 10 KB (a scan that rescans after each trigger costs a
hundred times more per byte at 1 MB), and within a constant factor of clean text's. Times are the
best of several runs (the least disturbed by other work on the machine); the factors are
generous, since this is a test of how the cost grows, not of speed (``bench/bench_native.py``
measures that). The exact count of automaton steps is checked the same way by the Rust tests
(``native/src/scrub/engine.rs``).
"""

from __future__ import annotations

import time

import pytest

from iir.policy.scrub import REDACTED, Scrubber

SCRUBBER = Scrubber(["hunter2hunter2-literal"])
SIZES = (10_000, 100_000, 1_000_000)
CLEAN = "Hello, can you help me debug this? It fails on line 3 of main.py. Thanks! "

#: Hostile text, one repeated unit per family: what each would cost a scan that rescans after
#: every trigger, rejected match or unfinished match.
HOSTILE: dict[str, str] = {
    "rejected assignments": "token=...",
    "PEM headers without an end": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n",
    "unclosed quotes": 'password="',
    "triggers without values": "token ",
    "glued triggers": "token",
    "nested quotes": "password=\"'",
    "one character": "a",
    "one token character": "sk-" + "a" * 40,
    "rejected tokens": "sk-xxxxx",
    "literal-secret prefixes": "hunter2hunter2-litera ",
    "basic without credentials": "basic ",
    "bearer without a token": "Authorization: Bearer ",
    "URL without a password": "://a",
    "AWS words": "aws secret ",
    "accepted assignments": "password=Zq9xWv8u ",
    "long token": "sk-proj-" + "Ab3dEf6hIj9kLm2n" * 4,
    # The rule table's keyword and context forms: vendor names, configuration shapes and
    # escapes before tokens, with no value or a rejected one.
    "vendor names without values": "cloudflare: ",
    "vendor assignments of placeholders": 'SENTRY_AUTH="xxxxxxxxxxxxxxxx" ',
    "setProperty without its close": 'System.setProperty("X_TOKEN", "',
    "curl -u without credentials": "curl -u ",
    "XML value attributes without a close": '<add key="Password" value="',
    "escapes before token prefixes": "%3Dghp_\\nxoxb-",
}


def _text(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def _per_byte(text: str, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        SCRUBBER.scrub_text(text)
        best = min(best, time.perf_counter() - t0)
    return best / len(text)


@pytest.fixture(scope="module")
def clean_per_byte() -> float:
    return _per_byte(_text(CLEAN, SIZES[-1]), 7)


@pytest.mark.parametrize("family", list(HOSTILE))
def test_cost_per_byte_does_not_grow_with_the_text(family: str, clean_per_byte: float) -> None:
    unit = HOSTILE[family]
    small, mid, large = (_per_byte(_text(unit, n), 15 if n < 10**6 else 5) for n in SIZES)
    ratios = f"{small * 1e9:.1f} / {mid * 1e9:.1f} / {large * 1e9:.1f} ns per byte"
    assert large <= 8 * small and mid <= 8 * small, f"{family}: {ratios}"
    # The bound per rule alone would keep the growth linear with a huge constant: the cost must
    # also stay within a constant of clean text's. The costliest families measure 40-90x clean
    # text (docs/security.md); the bound leaves room for a busy machine, while a scan that
    # rescanned per trigger would be thousands of times over it at 1 MB.
    assert large <= 200 * clean_per_byte, f"{family}: {ratios}, clean {clean_per_byte * 1e9:.1f}"


@pytest.mark.parametrize("family", list(HOSTILE))
def test_a_stream_of_hostile_text_equals_one_shot_and_holds_back_little(family: str) -> None:
    text = _text(HOSTILE[family], 300_000)
    want, _ = SCRUBBER.scrub_text(text)
    stream = SCRUBBER.stream()
    out: list[str] = []
    pushed = 0
    for start in range(0, len(text), 4096):
        chunk = text[start : start + 4096]
        out.append(stream.push(chunk))
        pushed += len(chunk)
        if REDACTED not in want:
            # Nothing is redacted: what is held back is what was pushed and not emitted.
            assert pushed - sum(map(len, out)) <= 16 * 1024 + 64, family
    out.append(stream.finish())
    assert "".join(out) == want
