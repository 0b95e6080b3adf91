"""docs/scrubbing.md lists every family of the rule table and the measured recall and
precision as ``python -m tests.scrub_report --write`` writes them now."""

from __future__ import annotations

from tests.scrub_report import DOC, current_doc
from tests.scrub_table import ENTRIES, rule_name


def test_the_scrubbing_page_is_current() -> None:
    assert DOC.read_text() == current_doc(), (
        "docs/scrubbing.md is out of date: run `python -m tests.scrub_report --write`"
    )


def test_the_page_names_every_family() -> None:
    text = DOC.read_text()
    missing = [rule_name(e) for e in ENTRIES if f"`{rule_name(e)}`" not in text]
    assert not missing, missing
