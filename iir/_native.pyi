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

# --- the upstream client (native/src/py_http.rs) --------------------------------------------------

class UpstreamError(Exception): ...
class UpstreamConnectError(UpstreamError): ...
class UpstreamTimeout(UpstreamError): ...
class UpstreamTooLarge(UpstreamError): ...

Headers = list[tuple[str, str]]
Event = tuple[str, bytes]

@final
class CompletionPort:
    """Where finished exchanges wait for the event loop (which watches ``fileno()``)."""

    def __init__(self) -> None: ...
    def fileno(self) -> int: ...
    def drain(self) -> list[tuple[int, object]]: ...

@final
class UpstreamTask:
    def abort(self) -> None: ...

@final
class UpstreamStream:
    def next(self, port: CompletionPort, id: int, timeout: float) -> UpstreamTask: ...
    def close(self) -> None: ...

@final
class UpstreamClient:
    def __init__(
        self,
        headers: Headers,
        connect_timeout: float,
        pool_idle_timeout: float = 30.0,
        pool_max_idle: int = 256,
    ) -> None: ...
    def exchange(
        self,
        port: CompletionPort,
        id: int,
        method_name: str,
        url: str,
        body: bytes | None,
        headers: Headers,
        timeout: float,
        limit: int,
        error_limit: int,
    ) -> UpstreamTask: ...
    def open_stream(
        self,
        port: CompletionPort,
        id: int,
        url: str,
        body: bytes,
        headers: Headers,
        timeout: float,
        error_limit: int,
        max_line: int,
    ) -> UpstreamTask: ...

@final
class SseParser:
    def __init__(self, max_line: int) -> None: ...
    def feed(self, chunk: bytes) -> list[Event]: ...
    def finish(self) -> list[Event]: ...
