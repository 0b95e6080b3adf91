"""The routing cue scan in plain Python: the reference the Rust scan is held to.

It reads the same tables (``iir/policy/routing/cues.toml``) and runs the same algorithm with Python's
``re`` and ``str`` methods, independently of the Rust code; the property tests in
``test_routing.py`` require identical scores and cues from both.
"""

from __future__ import annotations

import re

from iir.policy.routing.classifier import CATEGORIES, Category, _classify, tables
from iir.policy.routing.features import Features

_T = tables()

# The patterns of the tables in Python's syntax, in the tables' order (the data file holds their
# Rust spelling, with Python's character classes written out).
PYTHON_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\d(?:\s*[*/\u00d7\u00f7=]\s*\(?-?\d|\s+[-+]\s+\(?\d|\+\d)|\^\d"),
    re.compile(r"\d\s?%"),
    re.compile(r"\b(?:def|function|fn|func) \w+\("),
    re.compile(r"\bimport [\w.]+$", re.M),
    re.compile(r"\bselect \S.* from "),
    re.compile(r"\{\s*\"\w+\"\s*:"),
)
assert len(PYTHON_PATTERNS) == len(_T.patterns), "one Python pattern per pattern of the tables"

_CLAUSE_END = re.compile(f"[{re.escape(_T.clause_chars)}]|\\.\\s")
_WIDE = re.compile("[" + "".join(f"{chr(a)}-{chr(b)}" for a, b in _T.wide_ranges) + "]")
TOKEN = re.compile(r"\w[\w'+#\-]*")
_WORD_KEYS = frozenset(k for k in _T.words if " " not in k)
PHRASE_KEYS = frozenset(k for k in _T.words if " " in k)
_PHRASE_NEXT: dict[str, tuple[tuple[str, str], ...]] = {}
for _phrase in sorted(PHRASE_KEYS):
    _first, _, _second = _phrase.partition(" ")
    _PHRASE_NEXT[_first] = (*_PHRASE_NEXT.get(_first, ()), (_second, _phrase))
_PHRASE_FIRSTS = frozenset(_PHRASE_NEXT)
_STEM_HEADS = frozenset(stem[:4] for stem in _T.stems)
_STEM_LENGTHS = tuple(sorted({len(stem) for stem in _T.stems}, reverse=True))
_CJK_KEYS = tuple(_T.cjk)
# ASCII text is split the same way without the regular expression: bytes outside the token
# alphabet become spaces, and a run is a token once any leading ' + # - is dropped.
_TOKEN_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_'+#-")
_TO_SPACES = bytes(c if c in _TOKEN_BYTES else 0x20 for c in range(256))
_NOT_WORD_STARTS = ("'", "+", "#", "-")
_NO_KEYS: frozenset[str] = frozenset()


def _stems(words: set[str]) -> set[str]:
    found: set[str] = set()
    for word in [w for w in words if w[:4] in _STEM_HEADS]:
        for n in _STEM_LENGTHS:  # longest first: one stem per word
            if n <= len(word) and word[:n] in _T.stems:
                found.add(word[:n])
                break
    return found


def tokens(text: str) -> list[str]:
    """``TOKEN.findall(text)``, faster for ASCII text."""
    if not text.isascii():
        return TOKEN.findall(text)
    runs = text.encode("ascii").translate(_TO_SPACES).decode("ascii")
    if (
        runs.startswith(_NOT_WORD_STARTS)
        or " '" in runs
        or " +" in runs
        or " #" in runs
        or " -" in runs
    ):
        return [t for t in (r.lstrip("'+#-") for r in runs.split()) if t]
    return runs.split()


def phrases(found_tokens: list[str], words: set[str]) -> set[str]:
    """The cue phrases among neighbouring tokens (``words`` holds at least the tokens)."""
    found: set[str] = set()
    for first in words & _PHRASE_FIRSTS:
        for second, phrase in _PHRASE_NEXT[first]:
            if second in words:
                try:  # ``first`` may be only an elision's end (l'how), not a token
                    i = found_tokens.index(first)
                    while found_tokens[i + 1] != second:
                        i = found_tokens.index(first, i + 1)
                except (IndexError, ValueError):
                    continue
                found.add(phrase)
    return found


def _keys(text: str, start: int, stop: int) -> set[str]:
    """Cue words, phrases and CJK cues in ``text[start:stop]``."""
    part = text[start:stop]
    found_tokens = tokens(part)
    out = set(found_tokens)
    if len(found_tokens) > 1:
        out |= phrases(found_tokens, out)
    if not part.isascii():
        out.update(cue for cue in _CJK_KEYS if cue in part)
    return out


def _score_text(
    text: str,
    weight: float,
    total: dict[str, float],
    cues: dict[str, list[tuple[float, str]]],
    lead_end: int = 0,
    end_start: int = -1,
) -> None:
    if not text:
        return
    scores = dict.fromkeys(CATEGORIES, 0.0)
    bonus = dict.fromkeys(CATEGORIES, 0.0)
    found_tokens = tokens(text)
    words = set(found_tokens)
    if "'" in text:  # elisions: l'area, d'une, qu'il; keep the whole token too (what's)
        words.update(t.rpartition("'")[2] for t in found_tokens if "'" in t)
    found = words & _WORD_KEYS
    if len(found_tokens) > 1:
        found |= phrases(found_tokens, words)
    hits = [(key, _T.words[key]) for key in sorted(found)]
    if not text.isascii() and _WIDE.search(text):
        hits.extend((cue, _T.cjk[cue]) for cue in _CJK_KEYS if cue in text)
    lead = _keys(text, 0, lead_end) if lead_end > 0 and hits else _NO_KEYS
    end = _keys(text, end_start, len(text)) if end_start >= 0 and hits else _NO_KEYS
    for key, entries in hits:
        extra = 0.0
        if key in lead:
            extra += _T.lead_bonus
        if key in end:
            extra += _T.end_bonus
        for cat, w in entries:
            scores[cat] += w * weight
            cues[cat].append((w * (weight + extra), key))
            if extra:
                bonus[cat] += w * extra
    for stem in sorted(_stems(words)):
        for cat, w in _T.stems[stem]:
            scores[cat] += w * weight
            cues[cat].append((w * weight, stem + "*"))
    for cat, marker, w, label in _T.markers:
        if marker in text:
            scores[cat] += w * weight
            cues[cat].append((w * weight, label))
    ascii_text = text.isascii()
    for p, pattern in zip(_T.patterns, PYTHON_PATTERNS, strict=True):
        for lits, digits in p.gates:
            if not (digits and not ascii_text) and not any(map(text.__contains__, lits)):
                break
        else:
            if pattern.search(text):
                scores[p.category] += p.weight * weight
                cues[p.category].append((p.weight * weight, p.label))
    cap = _T.section_cap * weight
    for cat in CATEGORIES:
        v, b = scores[cat], bonus[cat]
        if v:
            total[cat] += min(v, cap) + min(b, _T.section_cap * (_T.lead_bonus + _T.end_bonus))


def scan(head: str, tail: str, system: str) -> tuple[list[float], list[list[tuple[float, str]]]]:
    """Scores and cues of a prompt, per category in :data:`CATEGORIES` order."""
    text = f"{head}\n{tail}" if tail else head
    lead_end, end_start = 0, -1
    m = _CLAUSE_END.search(head, 0, 200)
    if m is not None and m.end() < len(head.rstrip()):
        lead_end = m.end()
        last = text.rstrip()
        cut = max(last.rfind("\n"), last.rfind(". "))
        if cut > 0:
            end_start = cut
    scores = dict.fromkeys(CATEGORIES, 0.0)
    cues: dict[str, list[tuple[float, str]]] = {c: [] for c in CATEGORIES}
    _score_text(text, _T.text_weight, scores, cues, lead_end, end_start)
    _score_text(system, _T.system_weight, scores, cues)
    return list(scores.values()), list(cues.values())


def classify(features: Features) -> Category:
    """:func:`iir.policy.routing.classifier.classify` with this scan."""
    return _classify(features, scan)
