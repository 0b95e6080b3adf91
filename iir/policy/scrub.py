"""Secret scrubbing: every secret in a payload, log line or stream becomes ``REDACTED``.

The matching runs in Rust (``iir._native``), which also owns the constants (``REDACTED``, the
shortest literal secret, which environment variable names hold secrets). The rules come from the
package's table (``scrub_rules.toml``, one entry per credential family) and, optionally, from an
operator's file in gitleaks' format (``IIR_SCRUB_RULES_FILE``, checked at start-up by
:mod:`iir.cli.checks`); this module reads them, picks the literal secrets (the process's own
secret environment variables and IIR's keys) and gives the typed entry points.
``Scrubber.scrub`` raises :class:`ScrubError` (a ``ValueError``) with the path of the field it
cannot walk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from iir import _native
from iir._native import MIN_ENV_SECRET_LEN, REDACTED, RuleSet, ScrubError
from iir._native import is_secret_env_name as is_secret_name

__all__ = [
    "MIN_ENV_SECRET_LEN",
    "REDACTED",
    "RULES_TABLE",
    "RuleSet",
    "RulesFileError",
    "ScrubError",
    "Scrubber",
    "StreamScrubber",
    "builtin_rules",
    "is_secret_name",
    "load_rules_file",
    "rules_table_text",
    "secret_values",
]

log = logging.getLogger("iir.policy.scrub")

#: The rule table's file name inside this package.
RULES_TABLE = "scrub_rules.toml"


class RulesFileError(ValueError):
    """An operator's rule file that cannot be used; the message names the file, the rule and
    its line."""


def rules_table_text() -> str:
    """The text of the package's rule table."""
    return resources.files("iir.policy").joinpath(RULES_TABLE).read_text("utf-8")


@cache
def builtin_rules() -> RuleSet:
    """The package's rule table, parsed once per process."""
    return RuleSet.from_table(rules_table_text())


def load_rules_file(path: str | os.PathLike[str]) -> RuleSet:
    """Extra rules in gitleaks' TOML format (``[[rules]]`` with ``id``, ``regex``,
    ``secretGroup``, ``entropy``, ``keywords``, allowlists); :class:`RulesFileError` names what
    cannot be used."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except OSError as exc:
        raise RulesFileError(f"{p}: cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise RulesFileError(f"{p}: not UTF-8 text") from None
    try:
        return RuleSet.from_gitleaks(text)
    except ValueError as exc:
        raise RulesFileError(f"{p}: {exc}") from None


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
    """A compiled set of secret rules plus the literal secrets of this process.

    The rules are the package's table, after ``extra_rules`` (an operator's rules, which then
    name what they find where both match).
    """

    __slots__ = ("_inner", "scrub", "scrub_text")

    #: ``scrub_text(text) -> (clean text, {rule: count})``; the same object when nothing matched.
    scrub_text: Callable[[str], tuple[str, dict[str, int]]]
    #: ``scrub(obj) -> (clean obj, {rule: count})``: walks dicts, lists and strings in one call,
    #: never mutates the input and returns the same object when nothing matched; raises
    #: :class:`ScrubError` (``.path``, ``.reason``) for a payload nested too deep.
    scrub: Callable[[Any], tuple[Any, dict[str, int]]]

    def __init__(self, secrets: Iterable[str] = (), extra_rules: RuleSet | None = None) -> None:
        rules = [builtin_rules()] if extra_rules is None else [extra_rules, builtin_rules()]
        self._inner = _native.Scrubber([s for s in secrets if isinstance(s, str)], rules)
        # Bound native methods: no Python frame on the hot path.
        self.scrub_text = self._inner.scrub_text
        self.scrub = self._inner.scrub

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str] | None = None,
        extra_secrets: Iterable[str] = (),
        rules_file: str | os.PathLike[str] | None = None,
    ) -> Scrubber:
        """Scrubber for this process: its secret environment values plus ``extra_secrets``, and
        the rules of ``rules_file`` (gitleaks' format) besides the built-in ones."""
        env = os.environ if environ is None else environ
        extra = [s for s in extra_secrets if s and len(s) >= MIN_ENV_SECRET_LEN]
        rules = load_rules_file(rules_file) if rules_file else None
        for why in rules.skipped if rules else ():
            # Said once at start-up, so that the operator knows which of the rules do not apply.
            log.warning(
                "IIR_SCRUB_RULES_FILE: %s: %s left out",
                rules_file,
                why,
                extra={"event": "scrub_rule_skipped"},
            )
        return cls([*secret_values(env), *extra], rules)

    @property
    def rule_names(self) -> list[str]:
        """Every rule name that can appear in the counts."""
        return self._inner.rule_names

    def stream(self) -> StreamScrubber:
        """A scrubber for one stream."""
        return StreamScrubber(self._inner.stream())
