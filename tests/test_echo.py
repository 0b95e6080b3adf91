"""The echo model's own tokenizer: lossless, and the same pieces as its one-regex definition."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from iir.backends.echo import pieces

# The definition: a word of up to six characters or one symbol with the whitespace before it,
# or the whitespace at the very end.
_DEFINITION = re.compile(r"\s*(?:\w{1,6}|[^\w\s])|\s+$")


@given(st.text())
def test_pieces_give_the_text_back(text: str) -> None:
    assert "".join(pieces(text)) == text


@given(st.text(alphabet=st.sampled_from(list("ab1_é,.!  \t\n\u00a0"))) | st.text())
def test_pieces_follow_the_definition(text: str) -> None:
    assert pieces(text) == _DEFINITION.findall(text)
