"""Secret scrubbing: every secret in a payload, log line or stream becomes ``REDACTED``.

The matching runs in Rust (``iir._native``), which also owns the constants (``REDACTED``, the
shortest literal secret, which environment variable names hold secrets); this module picks the
literal secrets (the process's own secret environment variables and IIR's keys) and gives the
typed entry points. ``Scrubber.scrub`` raises :class:`ScrubError` (a ``ValueError``) with the
path of the field it cannot walk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from iir import _native
from iir._native import MIN_ENV_SECRET_LEN, REDACTED, ScrubError
from iir._native import is_secret_env_name as is_secret_name

__all__ = [
    "MIN_ENV_SECRET_LEN",
    "REDACTED",
    "ScrubError",
    "Scrubber",
    "StreamScrubber",
    "is_secret_name",
    "secret_values",
]


def secret_values(environ: Mapping[str, str]) -> list[str]:
    """Values of the secret environment variables, long enough to be matched safely."""
    return sorted(
        {
            value
            for name, value in environ.items()
            if is_secret_name(name) and len(value) >= MIN_ENV_SECRET_LEN and value != REDACTED
        }
    )


class StreamScrubber:
    """Scrubs one stream of chunks (e.g. SSE deltas); a secret split across chunks is still found.

    ``push`` returns what is safe to emit now and holds back only the tail that could still
    become a secret (never more than a rule's bound, 16 KB at most); ``finish`` flushes it. The
    concatenated output equals ``Scrubber.scrub_text`` of the concatenated input, for every
    chunking.
    """

    __slots__ = ("_inner", "finish", "push")

    #: ``push(text) -> str``: the part that is safe to emit now.
    push: Callable[[str], str]
    #: ``finish() -> str``: the rest, at the end of the stream.
    finish: Callable[[], str]

    def __init__(self, inner: _native.StreamScrubber) -> None:
        self._inner = inner
        self.push = inner.push
        self.finish = inner.finish

    @property
    def counts(self) -> dict[str, int]:
        """Redactions so far, by rule name."""
        return self._inner.counts


class Scrubber:
    """A compiled set of secret rules plus the literal secrets of this process."""

    __slots__ = ("_inner", "scrub", "scrub_text")

    #: ``scrub_text(text) -> (clean text, {rule: count})``; the same object when nothing matched.
    scrub_text: Callable[[str], tuple[str, dict[str, int]]]
    #: ``scrub(obj) -> (clean obj, {rule: count})``: walks dicts, lists and strings in one call,
    #: never mutates the input and returns the same object when nothing matched; raises
    #: :class:`ScrubError` (``.path``, ``.reason``) for a payload nested too deep.
    scrub: Callable[[Any], tuple[Any, dict[str, int]]]

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._inner = _native.Scrubber([s for s in secrets if isinstance(s, str)])
        # Bound native methods: no Python frame on the hot path.
        self.scrub_text = self._inner.scrub_text
        self.scrub = self._inner.scrub

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, extra_secrets: Iterable[str] = ()
    ) -> Scrubber:
        """Scrubber for this process: its secret environment values plus ``extra_secrets``."""
        env = os.environ if environ is None else environ
        extra = [s for s in extra_secrets if s and len(s) >= MIN_ENV_SECRET_LEN]
        return cls([*secret_values(env), *extra])

    @property
    def rule_names(self) -> list[str]:
        """Every rule name that can appear in the counts."""
        return self._inner.rule_names

    def stream(self) -> StreamScrubber:
        """A scrubber for one stream."""
        return StreamScrubber(self._inner.stream())
