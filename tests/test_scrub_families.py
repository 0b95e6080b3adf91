"""Every family of the rule table, in every wrapper the gateway sees.

Each true positive's «marked» secrets must be redacted whole, and nothing else changed; each false
positive must come back untouched. The wrappers: plain text, inside a JSON string (escaped),
URL-encoded (``%20`` and form ``+``), and inside a streamed answer split at every byte boundary
(sampled for the longest fixtures, every family covered).
"""

from __future__ import annotations

import json
import random
import re
import string
import urllib.parse
from collections.abc import Callable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from iir.policy.scrub import REDACTED, Scrubber
from tests.scrub_table import ENTRIES, GENERIC_BEFORE, Fixture, fixtures, rule_name

SCRUBBER = Scrubber()

#: wrapper -> how a piece of text is written in it (applied piece by piece, so that the secret's
#: own encoded form is known), and what surrounds the whole.
WRAPPERS: dict[str, tuple[Callable[[str], str], str, str]] = {
    "plain": (lambda s: s, "", ""),
    "json": (lambda s: json.dumps(s)[1:-1], '{"role": "user", "content": "', '"}'),
    "url": (lambda s: urllib.parse.quote(s, safe=""), "https://api.example.net/v1/x?q=", "&n=2"),
    "form": (lambda s: urllib.parse.quote_plus(s), "text=", "&lang=en"),
}


def wrapped(fx: Fixture, wrapper: str) -> tuple[str, str]:
    """``(input, expected output)`` of a fixture in a wrapper."""
    enc, head, tail = WRAPPERS[wrapper]
    text = head + "".join(enc(p) for p, _ in fx.parts) + tail
    want = head + "".join(REDACTED if secret else enc(p) for p, secret in fx.parts) + tail
    return text, want


def streamed(text: str, cuts: list[int]) -> str:
    s = SCRUBBER.stream()
    out, last = [], 0
    for c in [*cuts, len(text)]:
        out.append(s.push(text[last:c]))
        last = c
    out.append(s.finish())
    return "".join(out)


TP = [fx for fx in fixtures() if fx.positive]
FP = [fx for fx in fixtures() if not fx.positive]


def test_the_table_covers_200_families_each_with_fixtures() -> None:
    assert len(ENTRIES) >= 200
    for e in ENTRIES:
        assert e["tp"] and e["fp"], e["id"]


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize("fx", TP, ids=[fx.key for fx in TP])
def test_true_positives_are_redacted_whole(fx: Fixture, wrapper: str) -> None:
    text, want = wrapped(fx, wrapper)
    got, counts = SCRUBBER.scrub_text(text)
    if got != want and wrapper in ("url", "form"):
        # In URL-encoded text a value that may hold `%XX` and `+` runs on past an encoded
        # delimiter such as `%26` (see native/src/scrub/forms.rs): the redaction may take more
        # than the secret, never less, and never what comes before it.
        enc, head, tail = WRAPPERS[wrapper]
        first = next(i for i, (_, secret) in enumerate(fx.parts) if secret)
        before = head + "".join(enc(p) for p, _ in fx.parts[:first])
        assert got.startswith(before + REDACTED) and got.endswith(tail), got
        assert not any(enc(p) in got for p, secret in fx.parts if secret), got
        return
    assert got == want
    if wrapper == "plain":
        # The family's own rule names what it found.
        assert fx.rule in counts, counts


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize("fx", FP, ids=[fx.key for fx in FP])
def test_false_positives_are_untouched(fx: Fixture, wrapper: str) -> None:
    text, want = wrapped(fx, wrapper)
    assert want == text
    got, counts = SCRUBBER.scrub_text(text)
    assert (got, counts) == (text, {})


def _cuts(n: int, rng: random.Random) -> list[int]:
    """Every split point of a short text; 80 of a long one (always the first and last few)."""
    if n <= 160:
        return list(range(1, n))
    return sorted({*range(1, 8), *range(n - 8, n), *rng.sample(range(8, n - 8), 64)})


@pytest.mark.parametrize("fx", TP + FP, ids=[fx.key for fx in TP + FP])
def test_a_stream_split_anywhere_equals_one_shot(fx: Fixture) -> None:
    text, want = wrapped(fx, "plain")
    text, want = f"Sure, here: {text}\nDone.", f"Sure, here: {want}\nDone."
    rng = random.Random(fx.key)
    for cut in _cuts(len(text), rng):
        assert streamed(text, [cut]) == want, cut
    # One character at a time: every boundary at once.
    assert streamed(text, list(range(1, len(text)))) == want


def test_rule_names_are_table_names() -> None:
    names = set(SCRUBBER.rule_names)
    assert {rule_name(e) for e in ENTRIES} <= names


# --- what random text may lose -------------------------------------------------------------------

_PLAIN_WORDS = """the a of to and in is it for on with as by this that be are from or at an not
token secret password key auth api access private public client id name value config settings
required optional default example sample test main user admin"""
_WORDS = [
    *_PLAIN_WORDS.split(),
    # Vendor names and token prefixes of the table, as words in identifiers.
    *{re.sub("[^a-z0-9]", "", t.lower()) for e in ENTRIES for t in e["triggers"] if len(t) > 2},
]
_SEPARATORS = ["_", ".", "-", "", "/"]

identifiers = st.lists(st.sampled_from(_WORDS), min_size=1, max_size=5).flatmap(
    lambda ws: st.sampled_from(_SEPARATORS).map(lambda sep: sep.join(ws))
) | st.lists(st.sampled_from(_WORDS), min_size=2, max_size=4).map(
    lambda ws: ws[0] + "".join(w[:1].upper() + w[1:] for w in ws[1:])
)
numbers = st.integers(0, 10**6).map(str)
prose = st.lists(
    identifiers | numbers | st.sampled_from([*string.punctuation, " ", "\n"]), max_size=30
).map(" ".join)


# A fixed sample (derandomized): the table is not perfect on such text, and a random one would
# make the suite fail at random. The measured rate over 20,000 random texts (0.07 % altered,
# each listed) is in docs/scrubbing.md, from tests/scrub_report.py; `sq0csp-sq0atp-bigcommerce-the`
# is one of that kind.
@settings(max_examples=400, deadline=None, derandomize=True)
@given(prose)
def test_identifiers_and_prose_lose_nothing(text: str) -> None:
    """Identifiers built from words, vendor names and token prefixes, numbers and punctuation hold
    no credential: nothing is redacted but a value after a generic secret word."""
    got, _ = SCRUBBER.scrub_text(text)
    pieces = got.split(REDACTED)
    for before in pieces[:-1]:
        assert GENERIC_BEFORE.search(before), (text, got)
    # Nothing else changed: the pieces between redactions are the input's, in order.
    at = 0
    for piece in pieces:
        found = text.find(piece, at)
        assert found >= 0, (text, got)
        at = found + len(piece)


_SECRET_WORDS = ("pass", "secret", "key", "token", "pwd", "auth", "bearer", "basic", "-u")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(identifiers, identifiers, st.sampled_from(["=", ": ", " = ", '": "', "=>", ">"]))
def test_a_word_valued_assignment_loses_nothing(key: str, value: str, op: str) -> None:
    """``vendor_name = some_identifier``: a value of words (no digits) is no credential, under
    any key but the secret words' (``password = …`` takes any value that is no placeholder)."""
    assume(not any(w in key.lower() for w in _SECRET_WORDS))
    # Prefixes with digits (`dt0c01`, `sk9`) make camel-cased values as varied as a key of 20
    # base62 characters (`accessDt0c01Sbsecret`): those are left to tests/scrub_report.py's
    # count of false positives on ordinary text.
    assume(not any(c.isdigit() for c in value))
    text = f"{key}{op}{value}"
    got, counts = SCRUBBER.scrub_text(text)
    assert (got, counts) == (text, {})
