"""The task category of a prompt, from weighted cues in several languages.

Explainable by construction: every point a category scores comes from a named cue (a word, a word
stem, a two-word phrase, a CJK keyword or a structural pattern such as a code fence), and the
decision reports the cues that won. Cost is linear in the (bounded) text the features kept: one
word split, a few dictionary look-ups per word and a handful of regular expressions.

The cues are package data (``cues.toml`` next to this module, read once per process); the scan
runs in Rust (``iir._native.CueScanner``). A plain-Python scan is kept in the tests as its
reference.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from operator import itemgetter
from typing import Any

from iir import _native
from iir.policy.routing.features import Features

CHAT = "chat"
QA = "qa"
CODING = "coding"
MATH = "math"
REASONING = "reasoning"
CREATIVE = "creative"
SUMMARIZATION = "summarization"
TRANSLATION = "translation"
EXTRACTION = "extraction"

CATEGORIES: tuple[str, ...] = (
    CHAT,
    QA,
    CODING,
    MATH,
    REASONING,
    CREATIVE,
    SUMMARIZATION,
    TRANSLATION,
    EXTRACTION,
)


class ClassifierError(Exception):
    """The classifier could not decide (answered as 503 ``Classifier error: ...``)."""


# Below this best score the request has no clear cue: short small talk or a plain question.
_MIN_SCORE = 2.0
_SMALL_TALK_CHARS = 120
_SHORT_CHARS = 25
_CUES_FILE = "cues.toml"

#: A cue's points: (category, weight) pairs.
Entries = tuple[tuple[str, float], ...]


@dataclass(slots=True, frozen=True)
class CuePattern:
    """A structural cue: a Rust regular expression, run only when each gate passes (a gate is a
    group of literals one of which must be in the text; ``digits`` also passes any text that is
    not ASCII, since ``\\d`` matches other scripts' digits)."""

    category: str
    label: str
    weight: float
    gates: tuple[tuple[tuple[str, ...], bool], ...]
    regex: str


@dataclass(slots=True, frozen=True)
class CueTables:
    """The cue tables of ``cues.toml``, parsed (see the file for what each part means)."""

    words: dict[str, Entries]
    stems: dict[str, Entries]
    cjk: dict[str, Entries]
    markers: tuple[tuple[str, str, float, str], ...]  # (category, text, weight, label)
    patterns: tuple[CuePattern, ...]
    text_weight: float
    system_weight: float
    section_cap: float
    lead_bonus: float
    end_bonus: float
    clause_chars: str
    wide_ranges: tuple[tuple[int, int], ...]


_DIGITS = tuple("0123456789")


def _parse(data: Mapping[str, Any]) -> CueTables:
    if tuple(data["categories"]) != CATEGORIES:
        raise ValueError(f"categories {data['categories']} differ from {list(CATEGORIES)}")
    words: dict[str, list[tuple[str, float]]] = {}
    stems: dict[str, list[tuple[str, float]]] = {}
    for cat, spec in data["latin"].items():
        for line in spec.strip().splitlines():
            weight_s, _, cues = line.strip().partition(":")
            weight = float(weight_s)
            for cue in cues.split():
                if cue.count("_") > 1 or (cue.endswith("*") and len(cue) < 5):
                    raise ValueError(f"bad cue {cue!r}: phrases have two words, stems 4+ letters")
                cue = cue.replace("_", " ")
                if cue.endswith("*"):
                    stems.setdefault(cue[:-1], []).append((cat, weight))
                else:
                    words.setdefault(cue, []).append((cat, weight))
    cjk: dict[str, list[tuple[str, float]]] = {}
    for cat, spec in data["cjk"].items():
        weight_s, _, cues = spec.partition(":")
        for cue in cues.split():
            cjk.setdefault(cue, []).append((cat, float(weight_s)))
    patterns = tuple(
        CuePattern(
            p["category"],
            p["label"],
            float(p["weight"]),
            tuple((_DIGITS, True) if g == "digits" else (tuple(g), False) for g in p["gates"]),
            p["regex"],
        )
        for p in data["patterns"]
    )
    scoring = data["scoring"]
    for cat in [*data["latin"], *data["cjk"]]:
        if cat not in CATEGORIES:
            raise ValueError(f"unknown category {cat!r}")
    return CueTables(
        words={k: tuple(v) for k, v in words.items()},
        stems={k: tuple(v) for k, v in stems.items()},
        cjk={k: tuple(v) for k, v in cjk.items()},
        markers=tuple(
            (m["category"], m["text"], float(m["weight"]), m["label"]) for m in data["markers"]
        ),
        patterns=patterns,
        text_weight=float(scoring["text_weight"]),
        system_weight=float(scoring["system_weight"]),
        section_cap=float(scoring["section_cap"]),
        lead_bonus=float(scoring["lead_bonus"]),
        end_bonus=float(scoring["end_bonus"]),
        clause_chars=scoring["clause_chars"],
        wide_ranges=tuple((int(a), int(b)) for a, b in scoring["wide_ranges"]),
    )


@cache
def tables() -> CueTables:
    """The cue tables of the package, read once."""
    try:
        text = resources.files(__package__).joinpath(_CUES_FILE).read_text(encoding="utf-8")
        return _parse(tomllib.loads(text))
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ClassifierError(f"cue tables {_CUES_FILE}: {type(exc).__name__}: {exc}") from exc


@dataclass(slots=True, frozen=True)
class Category:
    name: str
    confidence: float  # share of the winner in all points scored, 0..1
    cues: tuple[str, ...]  # the winner's strongest cues, for the human reason

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "confidence": round(self.confidence, 3), "cues": list(self.cues)}


_Cues = list[list[tuple[float, str]]]
_INDICES = range(len(CATEGORIES))
_CHAT_AT = CATEGORIES.index(CHAT)
_SUMMARIZATION_AT = CATEGORIES.index(SUMMARIZATION)
#: ``scan(head, tail, system) -> (points per category, cues per category)``, in
#: :data:`CATEGORIES` order.
Scan = Callable[[str, str, str], tuple[list[float], _Cues]]


@cache
def native_scan() -> Scan:
    """The cue scan, built from the tables once per process (a few milliseconds)."""
    t = tables()
    index = {c: i for i, c in enumerate(CATEGORIES)}

    def entries(table: dict[str, Entries]) -> list[tuple[str, list[tuple[int, float]]]]:
        return [(k, [(index[c], w) for c, w in v]) for k, v in table.items()]

    try:
        scanner = _native.CueScanner(
            len(CATEGORIES),
            entries(t.words),
            entries(t.stems),
            entries(t.cjk),
            [(text, index[cat], w, label) for cat, text, w, label in t.markers],
            [
                (
                    p.regex,
                    [(list(lits), digits) for lits, digits in p.gates],
                    index[p.category],
                    p.weight,
                    p.label,
                )
                for p in t.patterns
            ],
            t.clause_chars,
            list(t.wide_ranges),
            (t.text_weight, t.system_weight, t.section_cap, t.lead_bonus, t.end_bonus),
        )
    except (KeyError, ValueError) as exc:
        raise ClassifierError(f"cue tables {_CUES_FILE}: {exc}") from exc
    return scanner.scan_prompt


def classify(features: Features) -> Category:
    """The task category of the request whose features are given."""
    return _classify(features, native_scan())


def _classify(features: Features, scan: Scan) -> Category:
    try:
        head = features.head
        scores, cues = scan(head, features.tail, features.system)
        # Small talk is short: greetings and thanks inside a long text are material.
        if features.chars > _SMALL_TALK_CHARS:
            scores[_CHAT_AT] *= 0.3
        # Long material with an instruction to shorten it is the summarization signature.
        if features.chars > 1500 and scores[_SUMMARIZATION_AT] > 0:
            scores[_SUMMARIZATION_AT] += 2.0
            cues[_SUMMARIZATION_AT].append((2.0, "long input"))
        at = max(_INDICES, key=scores.__getitem__)  # the first of equals, in CATEGORIES order
        best, top = CATEGORIES[at], scores[at]
    except Exception as exc:  # a bug here must not become a 500 without a reason
        raise ClassifierError(f"{type(exc).__name__}: {exc}") from exc
    if top < _MIN_SCORE:
        # Weak cues: a question is general Q&A, a short remark small talk.
        stripped = head.strip()
        if stripped.endswith(("?", "\uff1f")):
            name = QA
        elif len(stripped) <= _SHORT_CHARS:
            name = CHAT
        else:
            name = best if top > 0 else QA
        found_cues = _top(cues[CATEGORIES.index(name)])
        return Category(name, 0.5 if found_cues else 0.3, found_cues or ("no clear cue",))
    return Category(best, top / sum(scores), _top(cues[at]))


def _top(found: list[tuple[float, str]]) -> tuple[str, ...]:
    found.sort(key=itemgetter(0), reverse=True)  # stable: equals keep the order found
    return tuple(dict.fromkeys(label for _, label in found))[:3]
