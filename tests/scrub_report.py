"""The scrubber's recall and precision on the project's fixtures, and the list of its families.

``python -m tests.scrub_report`` (``make scrub-report``) prints the report; ``--write`` puts it,
with the family list, into ``docs/scrubbing.md`` between its markers (tests/test_scrub_docs.py
checks that the file is current).

Recall: of the secrets marked in the true-positive fixtures, the share redacted whole (nothing of
the secret left, nothing before it taken). Precision: of the texts the scrubber changed, the
share that held a secret (a false positive changed counts against it). Both are measured in
every wrapper the gateway sees, and on ordinary text: random identifiers and prose built from
the table's own vendor names and prefixes, whose every redaction is a false positive.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from iir.policy.scrub import REDACTED, Scrubber
from tests.scrub_table import ENTRIES, GENERIC_BEFORE, Fixture, fixtures, rule_name

DOC = Path(__file__).resolve().parent.parent / "docs" / "scrubbing.md"
BEGIN, END = "<!-- scrub-report:begin -->", "<!-- scrub-report:end -->"
#: False positives on ordinary text shown in full (the rest are counted by rule).
SHOWN = 6

WRAPPERS: dict[str, Callable[[str], str]] = {
    "plain text": lambda s: s,
    "JSON string": lambda s: json.dumps(s)[1:-1],
    "URL-encoded": lambda s: urllib.parse.quote(s, safe=""),
    "form-encoded": urllib.parse.quote_plus,
}


@dataclass
class Score:
    secrets: int = 0
    caught: int = 0
    lookalikes: int = 0
    altered: int = 0

    @property
    def recall(self) -> float:
        return self.caught / self.secrets if self.secrets else 1.0

    @property
    def precision(self) -> float:
        found = self.caught + self.altered
        return self.caught / found if found else 1.0


def _leaves_nothing(got: str, secret: str) -> bool:
    """No piece of 8 characters (the whole of a shorter one) of ``secret`` is in ``got``."""
    k = min(8, len(secret))
    return not any(secret[i : i + k] in got for i in range(len(secret) - k + 1))


def _caught(scrubber: Scrubber, fx: Fixture, enc: Callable[[str], str]) -> tuple[int, int]:
    """``(secrets, caught whole)`` of one true positive in one wrapper: the output is exactly
    the text with each secret replaced, or (URL-encoded text, where a redaction may run on past
    an encoded delimiter) no piece of a secret is left."""
    text = "".join(enc(p) for p, _ in fx.parts)
    want = "".join(REDACTED if secret else enc(p) for p, secret in fx.parts)
    got, _ = scrubber.scrub_text(text)
    secrets = [enc(p) for p, secret in fx.parts if secret]
    if got == want:
        return len(secrets), len(secrets)
    return len(secrets), sum(_leaves_nothing(got, p) for p in secrets)


def _streamed(scrubber: Scrubber, text: str) -> str:
    """One character at a time: every split point of a stream at once."""
    s = scrubber.stream()
    return "".join(s.push(c) for c in text) + s.finish()


def score(scrubber: Scrubber) -> dict[str, Score]:
    out: dict[str, Score] = {}
    for name, enc in WRAPPERS.items():
        sc = out.setdefault(name, Score())
        for fx in fixtures():
            if fx.positive:
                n, c = _caught(scrubber, fx, enc)
                sc.secrets += n
                sc.caught += c
            else:
                text = enc(fx.text)
                sc.lookalikes += 1
                sc.altered += scrubber.scrub_text(text)[0] != text
    sc = out.setdefault("stream, split at every character", Score())
    for fx in fixtures():
        want = "".join(REDACTED if s else p for p, s in fx.parts)
        got = _streamed(scrubber, fx.text)
        if fx.positive:
            n = sum(s for _, s in fx.parts)
            sc.secrets += n
            sc.caught += n if got == want else 0
        else:
            sc.lookalikes += 1
            sc.altered += got != fx.text
    return out


_PLAIN = """the a of to in is for on with by this that from or at not config settings required
optional default example sample test main user admin client name value id url host port path
file list data model version build release update"""


def ordinary_text(n: int = 20_000, seed: int = 7) -> list[str]:
    """Random identifiers, assignments of words and numbers, and prose, from plain words and the
    table's vendor names and token prefixes (a fixed seed: the report is reproducible)."""
    rng = random.Random(seed)
    plain = _PLAIN.split()
    vendor = sorted(
        {re.sub("[^a-z0-9]", "", t.lower()) for e in ENTRIES for t in e["triggers"] if len(t) > 2}
    )
    words = plain + vendor

    def ident() -> str:
        ws = [rng.choice(words) for _ in range(rng.randint(1, 4))]
        sep = rng.choice(["_", "-", ".", "", "/"])
        return sep.join(ws) if rng.random() < 0.7 else ws[0] + "".join(w.title() for w in ws[1:])

    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.4:
            out.append(ident())
        elif kind < 0.7:
            value = ident() if rng.random() < 0.5 else str(rng.randrange(10**9))
            op = rng.choice(["=", ": ", " = ", '": "', "=>"])
            out.append(f"{ident()}{op}{value}")
        else:
            out.append(" ".join(ident() for _ in range(rng.randint(3, 12))) + ".")
    return out


def ordinary_score(
    scrubber: Scrubber,
) -> tuple[int, int, int, list[tuple[str, str, dict[str, int]]]]:
    """``(texts, bytes, values after a generic secret word, other texts altered)`` over
    :func:`ordinary_text`. A value after ``password=``, ``token:``, ... is taken by design
    (checked only for placeholders); any other change is a false positive."""
    texts = ordinary_text()
    generic = 0
    other: list[tuple[str, str, dict[str, int]]] = []
    for t in texts:
        got, counts = scrubber.scrub_text(t)
        if got == t:
            continue
        if all(GENERIC_BEFORE.search(before) for before in got.split(REDACTED)[:-1]):
            generic += 1
        else:
            other.append((t, got, counts))
    return len(texts), sum(len(t) for t in texts), generic, other


def report(scrubber: Scrubber | None = None) -> str:
    scrubber = scrubber or Scrubber()
    scores = score(scrubber)
    tps = sum(1 for fx in fixtures() if fx.positive)
    fps = len(fixtures()) - tps
    lines = [
        f"Over the rule table's fixtures: {len(ENTRIES)} families, {tps} true-positive texts "
        f"({scores['plain text'].secrets} secrets) and {fps} look-alikes "
        "(`python -m tests.scrub_report`, `make scrub-report`).",
        "",
        "| wrapper | secrets redacted whole | look-alikes altered | recall | precision |",
        "|---|---|---|---|---|",
    ]
    for name, sc in scores.items():
        lines.append(
            f"| {name} | {sc.caught}/{sc.secrets} | {sc.altered}/{sc.lookalikes} "
            f"| {sc.recall:.1%} | {sc.precision:.1%} |"
        )
    n, size, generic, other = ordinary_score(scrubber)
    lines += [
        "",
        f"Ordinary text: {n} random identifiers, word and number assignments and sentences "
        f"({size // 1024} KB, built from plain words and the table's vendor names and "
        f"prefixes, so that every prefix appears in look-alike places): {generic} values after "
        "a generic secret word redacted by design (`password=`, `token:`, ...; such a value is "
        f"checked for placeholders only), and {len(other)} other texts altered "
        f"({len(other) / n:.2%}, false positives)" + (":" if other else "."),
    ]
    if other:
        by_rule: dict[str, int] = {}
        for _, _, counts in other:
            for rule in counts:
                by_rule[rule] = by_rule.get(rule, 0) + 1
        lines.append(
            "by rule: " + ", ".join(f"`{r}` {c}" for r, c in sorted(by_rule.items())) + "; e.g."
        )
        lines += ["", *(f"- `{t}` → `{g}`" for t, g, _ in other[:SHOWN])]
    return "\n".join(lines) + "\n"


def families() -> str:
    """The family list, grouped by vendor."""
    lines = ["| vendor | rule | what it finds |", "|---|---|---|"]
    for e in sorted(ENTRIES, key=lambda e: (e["vendor"].lower(), e["id"])):
        desc = e["description"].replace("|", "\\|")
        lines.append(f"| {e['vendor']} | `{rule_name(e)}` | {desc} |")
    return "\n".join(lines) + "\n"


def generated() -> str:
    """The generated part of docs/scrubbing.md."""
    return (
        f"{BEGIN}\n<!-- written by `python -m tests.scrub_report --write`; do not edit -->\n\n"
        f"### Recall and precision\n\n{report()}\n"
        f"### The families ({len(ENTRIES)})\n\n{families()}{END}"
    )


def current_doc() -> str:
    """docs/scrubbing.md with its generated part as it would be written now."""
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + generated() + text[end:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="update docs/scrubbing.md")
    args = ap.parse_args()
    if args.write:
        DOC.write_text(current_doc())
    else:
        print(report(), end="")


if __name__ == "__main__":
    main()
