"""The rule table's entries and fixtures, for the tests, the report and the docs generator."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from typing import Any

from iir.policy.scrub import rules_table_text

ENTRIES: list[dict[str, Any]] = tomllib.loads(rules_table_text())["rule"]
_MARK = re.compile("«(.*?)»", re.S)

#: What the table lets take a plain word as a value: the generic secret words before an
#: assignment (`password = hunter`), whose values are checked only for placeholders.
GENERIC_BEFORE = re.compile(
    r"(?:pass(?:w(?:or)?d|phrase)|private[_-]?key|secret|a(?:pi|ccess)[_-]?key|token|pwd)"
    r"""["']?\s*(?:=>?|:=?|,)\s*["']?$""",
    re.I,
)


def rule_name(entry: dict[str, Any]) -> str:
    """The metrics name of an entry."""
    return str(entry.get("name", entry["id"]))


@dataclass(frozen=True)
class Fixture:
    """One fixture: its text in pieces, each a secret or not."""

    family: str
    rule: str
    positive: bool
    index: int
    parts: tuple[tuple[str, bool], ...]

    @property
    def key(self) -> str:
        return f"{self.family}-{'tp' if self.positive else 'fp'}{self.index}"

    @property
    def text(self) -> str:
        return "".join(p for p, _ in self.parts)


def parts(fixture: str, positive: bool) -> tuple[tuple[str, bool], ...]:
    """A true positive's «marked» pieces are secrets (no marks: the whole text is one)."""
    if not positive:
        return ((fixture, False),)
    if "«" not in fixture:
        return ((fixture, True),)
    out: list[tuple[str, bool]] = []
    last = 0
    for m in _MARK.finditer(fixture):
        if m.start() > last:
            out.append((fixture[last : m.start()], False))
        out.append((m.group(1), True))
        last = m.end()
    if last < len(fixture):
        out.append((fixture[last:], False))
    return tuple(out)


@cache
def fixtures() -> list[Fixture]:
    out = []
    for e in ENTRIES:
        for positive, key in ((True, "tp"), (False, "fp")):
            for i, f in enumerate(e.get(key, [])):
                out.append(Fixture(e["id"], rule_name(e), positive, i, parts(f, positive)))
    return out
