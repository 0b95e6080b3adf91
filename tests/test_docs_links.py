"""The README and the pages under docs/ link to each other: every relative link must name a file
that exists and, when it has one, an anchor that is a heading of that file (GitHub's rule for
heading anchors), so that a page moved or a heading renamed cannot leave a dead link behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats
    numbered."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _FENCE.sub("", page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(page: Path) -> list[str]:
    return [
        target
        for target in _LINK.findall(_FENCE.sub("", page.read_text()))
        if not re.match(r"[a-z]+:", target)
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    dead = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            dead.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            dead.append(f"{target}: no such heading")
    assert not dead, dead


def test_the_check_sees_links_and_anchors() -> None:
    """The parser finds the README's links to the docs, and the slugs match GitHub's rule."""
    assert any(t.startswith("docs/") for t in links(ROOT / "README.md"))
    config = anchors(ROOT / "docs" / "configuration.md")
    assert "remote-providers" in config and "local-engine" in config


_PATH = re.compile(r"`((?:iir|tests|bench|native|packaging|docs)/[\w./-]+\.\w+)`")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_source_path_named_exists(page: Path) -> None:
    """A page that names a source file (`iir/policy/scrub.py`) names one that is there."""
    missing = [p for p in _PATH.findall(page.read_text()) if not (ROOT / p).exists()]
    assert not missing, missing
