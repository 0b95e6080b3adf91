"""Typed stubs for the Rust extension ``iir._native``."""

from typing import Any, final

__version__: str
REDACTED: str
ENCODINGS: list[str]

@final
class Scrubber:
    """Built-in secret rules plus literal secrets (matched raw, JSON-escaped, URL-encoded, base64)."""

    def __init__(self, secrets: list[str] = ...) -> None: ...
    @property
    def rule_names(self) -> list[str]: ...
    def scrub_text(self, text: str) -> tuple[str, dict[str, int]]: ...
    def scrub(self, obj: Any) -> tuple[Any, dict[str, int]]: ...
    def stream(self) -> StreamScrubber: ...

@final
class StreamScrubber:
    def push(self, text: str) -> str: ...
    def finish(self) -> str: ...
    @property
    def counts(self) -> dict[str, int]: ...

@final
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: float
    retry_after_seconds: float
    def __init__(
        self,
        allowed: bool,
        limit: int,
        remaining: int,
        reset_seconds: float,
        retry_after_seconds: float,
    ) -> None: ...

@final
class RateLimiter:
    def __init__(
        self, per_minute: int, burst: int | None = None, max_keys: int = 100_000
    ) -> None: ...
    def check(self, key: str, cost: int = 1, now: float | None = None) -> Decision: ...
    def adjust(self, key: str, delta: int, now: float | None = None) -> None: ...
    def sweep(self, now: float | None = None) -> None: ...
    @property
    def enabled(self) -> bool: ...
    @property
    def per_minute(self) -> int: ...
    @property
    def burst(self) -> int: ...
    def __len__(self) -> int: ...

@final
class CueScanner:
    """The routing classifier's cue tables, compiled once (see ``iir.policy.routing.classifier``)."""

    def __init__(
        self,
        categories: int,
        words: list[tuple[str, list[tuple[int, float]]]],
        stems: list[tuple[str, list[tuple[int, float]]]],
        cjk: list[tuple[str, list[tuple[int, float]]]],
        markers: list[tuple[str, int, float, str]],
        patterns: list[tuple[str, list[tuple[list[str], bool]], int, float, str]],
        chars: tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]], str],
        weights: tuple[float, float, float, float, float],
    ) -> None: ...
    def scan_prompt(
        self, head: str, tail: str, system: str, top: int = 3
    ) -> tuple[list[float], list[list[tuple[float, str]]]]: ...

def rule_patterns() -> list[tuple[str, str]]: ...
def count_text(text: str, encoding: str = "o200k_base") -> int: ...
def count_texts(texts: list[str], encoding: str = "o200k_base") -> int: ...
def encode(text: str, encoding: str = "o200k_base") -> list[int]: ...
def encoding_ranks(encoding: str) -> list[bytes]: ...
