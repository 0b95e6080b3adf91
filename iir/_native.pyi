"""Typed stubs for the Rust extension ``iir._native``."""

from typing import Any, Self, final

__all__ = [
    "ENCODINGS",
    "MIN_ENV_SECRET_LEN",
    "REDACTED",
    "SECRET_NAME_WORDS",
    "CompletionPort",
    "CueScanner",
    "Decision",
    "RateLimiter",
    "RuleSet",
    "ScrubError",
    "Scrubber",
    "SseParser",
    "StreamScrubber",
    "UpstreamClient",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamStream",
    "UpstreamTask",
    "UpstreamTimeout",
    "UpstreamTooLarge",
    "__version__",
    "count_text",
    "count_texts",
    "cue_char_classes",
    "encode",
    "encoding_ranks",
    "is_secret_env_name",
]

__version__: str

# --- scrubbing -----------------------------------------------------------------------------------

#: The replacement for every secret.
REDACTED: str
#: Shortest literal secret (an environment variable's value, a key) that is matched: shorter
#: ones would redact ordinary words.
MIN_ENV_SECRET_LEN: int
#: Words that make an environment variable's value a secret, wherever they occur in its name.
SECRET_NAME_WORDS: tuple[str, ...]

def is_secret_env_name(name: str) -> bool:
    """Whether an environment variable of this name holds a secret: one of
    :data:`SECRET_NAME_WORDS` in it, letters compared as ``re.IGNORECASE`` compares them."""

class ScrubError(ValueError):
    """A payload :meth:`Scrubber.scrub` cannot walk (nested deeper than 256 levels).

    ``str(error)`` is ``"<path>: <reason>"`` (or the reason alone at the top level).
    """

    #: The field, in OpenAI's ``param`` style (``messages[0].content``); ``""`` for the top
    #: level. Keys are written scrubbed and shortened; a very deep path is elided in the middle.
    path: str
    #: What is wrong with it, for a human.
    reason: str

@final
class RuleSet:
    """Parsed secret rules: the package's table, or an operator's file in gitleaks' format."""

    @staticmethod
    def from_table(text: str) -> RuleSet:
        """The rule table (TOML in the table's own format); ``ValueError`` names the entry."""
    @staticmethod
    def from_gitleaks(text: str) -> RuleSet:
        """Rules in gitleaks' TOML format, translated and checked (each must compile, start with
        a literal and be found in linear time); ``ValueError`` names the rule and its line."""
    @property
    def names(self) -> list[str]:
        """Rule names in priority order."""
    @property
    def skipped(self) -> list[str]:
        """Rules of a gitleaks file left out because their matches may start anywhere (this
        engine runs a rule only where one of its start literals is found): rule, line, why."""
    def patterns(self) -> list[tuple[str, str, list[str]]]:
        """``(name, pattern, start literals)`` per pattern (Rust regex syntax)."""
    def __len__(self) -> int: ...

@final
class Scrubber:
    """Secret rules plus literal secrets (matched raw, JSON-escaped, URL-encoded, base64).

    Every call takes time linear in the text (see ``native/src/scrub/engine.rs``).
    """

    def __new__(cls, secrets: list[str], rules: list[RuleSet]) -> Self: ...
    @property
    def rule_names(self) -> list[str]:
        """Every rule name that can appear in the counts."""
    def scrub_text(self, text: str) -> tuple[str, dict[str, int]]:
        """``(clean text, {rule: count})``; the same object when nothing matched. Text with lone
        surrogates is scanned in its lossy form (never an error)."""
    def scrub(self, obj: Any) -> tuple[Any, dict[str, int]]:
        """Scrub dicts, lists, tuples and strings, nested, in one call: never mutates ``obj``,
        returns the same object when nothing matched, redacts the values of secret-looking keys.
        Raises :class:`ScrubError` for a payload nested too deep."""
    def stream(self) -> StreamScrubber:
        """A scrubber for one stream of chunks."""

@final
class StreamScrubber:
    """One stream: the concatenated output equals ``Scrubber.scrub_text`` of the concatenated
    input for every chunking; what is held back is bounded."""

    def push(self, text: str) -> str:
        """Add a chunk; returns the text that is final now."""
    def finish(self) -> str:
        """The rest, at the end of the stream (the stream can then start a new text)."""
    @property
    def counts(self) -> dict[str, int]:
        """Redactions so far, by rule name."""

# --- token counting ------------------------------------------------------------------------------

#: The encodings :func:`count_text` knows.
ENCODINGS: list[str]

def count_text(text: str, encoding: str = "o200k_base") -> int:
    """Number of tokens in ``text``, as tiktoken's ``encode_ordinary``. ``ValueError`` for an
    unknown encoding."""

def count_texts(texts: list[str], encoding: str = "o200k_base") -> int:
    """Total number of tokens over several texts."""

def encode(text: str, encoding: str = "o200k_base") -> list[int]:
    """Token ids of ``text``, as tiktoken's ``encode_ordinary``."""

def encoding_ranks(encoding: str) -> list[bytes]:
    """The rank table of an encoding (token bytes, index = rank), for reference encoders."""

# --- rate limiting -------------------------------------------------------------------------------

@final
class Decision:
    """The outcome of a rate-limit check (immutable; compares by value)."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: float
    retry_after_seconds: float
    def __new__(
        cls,
        allowed: bool,
        limit: int,
        remaining: int,
        reset_seconds: float,
        retry_after_seconds: float,
    ) -> Self: ...
    def __hash__(self) -> int: ...

@final
class RateLimiter:
    """Keyed GCRA limiter with bounded memory."""

    def __new__(
        cls, per_minute: int, burst: int | None = None, max_keys: int = 100_000
    ) -> Self: ...
    def check(self, key: str, cost: int = 1, now: float | None = None) -> Decision:
        """Admit ``cost`` units for ``key`` at ``now`` (seconds; default: a monotonic clock)."""
    def adjust(self, key: str, delta: int, now: float | None = None) -> None:
        """Charge (positive) or refund (negative) units for ``key``."""
    def sweep(self, now: float | None = None) -> None:
        """Drop idle keys now."""
    @property
    def enabled(self) -> bool: ...
    @property
    def per_minute(self) -> int: ...
    @property
    def burst(self) -> int: ...
    def __len__(self) -> int: ...

# --- routing cues --------------------------------------------------------------------------------

@final
class CueScanner:
    """The routing classifier's cue tables, compiled once (built by
    ``iir.policy.routing.classifier.native_scan`` from ``iir/policy/routing/cues.toml``)."""

    def __new__(
        cls,
        categories: int,
        words: list[tuple[str, list[tuple[int, float]]]],
        stems: list[tuple[str, list[tuple[int, float]]]],
        cjk: list[tuple[str, list[tuple[int, float]]]],
        markers: list[tuple[str, int, float, str]],
        patterns: list[tuple[str, list[tuple[list[str], bool]], int, float, str]],
        clause_chars: str,
        wide_ranges: list[tuple[int, int]],
        weights: tuple[float, float, float, float, float],
    ) -> Self:
        """``ValueError`` for a table it cannot use (a category out of range, a stem under four
        letters, a pattern that does not compile)."""
    def scan_prompt(
        self, head: str, tail: str, system: str, top: int = 3
    ) -> tuple[list[float], list[list[tuple[float, str]]]]:
        """Per category, the points scored and the ``top`` strongest cues as (points, label)."""

def cue_char_classes() -> dict[str, list[tuple[int, int]]]:
    """The cue scan's character classes as inclusive code-point ranges: ``word`` (Python's
    ``\\w``), ``space`` (its ``\\s``) and ``digit`` (``\\d``)."""

# --- the upstream client (native/src/py_http.rs) --------------------------------------------------

class UpstreamError(Exception):
    """The exchange failed for a reason other than those below (a reset, a bad answer)."""

class UpstreamConnectError(UpstreamError):
    """No connection (refused, unreachable, TLS failed) within the connect timeout."""

class UpstreamTimeout(UpstreamError):
    """A deadline passed: the whole answer, the first event or the next event."""

class UpstreamTooLarge(UpstreamError):
    """The answer (counted after inflating) or one SSE line passed its cap."""

_Headers = list[tuple[str, str]]
_Event = tuple[str, bytes]

@final
class CompletionPort:
    """Where finished exchanges wait for the event loop (which watches ``fileno()``)."""

    def __new__(cls) -> Self: ...
    def fileno(self) -> int: ...
    def drain(self) -> list[tuple[int, object]]:
        """Every outcome finished since the last call, as (id, value or exception)."""

@final
class UpstreamTask:
    def abort(self) -> None:
        """Drops the exchange's future: its connection closes and the provider sees it."""

@final
class UpstreamStream:
    def next(self, port: CompletionPort, id: int, timeout: float) -> UpstreamTask:
        """Posts ``(events, done)`` to ``port`` under ``id``: at least one event unless done."""
    def close(self) -> None:
        """Drops the connection."""

@final
class UpstreamClient:
    """One provider's pooled client (HTTP/1.1 keep-alive, HTTP/2 by ALPN, rustls)."""

    def __new__(
        cls,
        headers: _Headers,
        connect_timeout: float,
        pool_idle_timeout: float = 30.0,
        pool_max_idle: int = 256,
    ) -> Self: ...
    def exchange(
        self,
        port: CompletionPort,
        id: int,
        method_name: str,
        url: str,
        body: bytes | None,
        headers: _Headers,
        timeout: float,
        limit: int,
        error_limit: int,
    ) -> UpstreamTask:
        """Starts one request; ``(status, headers, body)`` arrives at ``port`` under ``id``."""
    def open_stream(
        self,
        port: CompletionPort,
        id: int,
        url: str,
        body: bytes,
        headers: _Headers,
        timeout: float,
        error_limit: int,
        max_line: int,
    ) -> UpstreamTask:
        """Starts a streamed request; ``(status, headers, body, stream, events)`` arrives at
        ``port``: a 2xx event stream gives no body, its first events and the stream to read on
        (None when it ended); any other answer its first ``error_limit`` bytes as ``body``."""

@final
class SseParser:
    """Splits SSE bytes into (event, data) pairs in linear time however they are chunked."""

    def __new__(cls, max_line: int) -> Self: ...
    def feed(self, chunk: bytes) -> list[_Event]: ...
    def finish(self) -> list[_Event]: ...
