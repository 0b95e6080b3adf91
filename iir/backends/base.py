"""The one interface every backend implements.

A backend turns a validated :class:`~iir.protocol.ChatRequest` into either a whole
:class:`Completion` or an async stream of :class:`Delta` pieces followed by one optional
:class:`Usage`. Ids, timestamps, SSE framing, scrubbing and metrics are the server's job, so a
backend only speaks about content.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..protocol import ChatRequest


@dataclass(slots=True)
class ModelCard:
    id: str
    owned_by: str
    created: int = 0
    context_length: int | None = None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    # Provider-specific breakdowns (cached tokens, reasoning tokens) in OpenAI's field names.
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Choice:
    index: int
    content: str | None
    finish_reason: str
    tool_calls: list[dict[str, Any]] | None = None
    refusal: str | None = None
    logprobs: dict[str, Any] | None = None


@dataclass(slots=True)
class Completion:
    choices: list[Choice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


@dataclass(slots=True)
class Delta:
    """A piece of one choice; ``tool_calls`` uses OpenAI's streaming delta shape."""

    index: int = 0
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    refusal: str | None = None
    logprobs: dict[str, Any] | None = None


StreamEvent = Delta | Usage

# States a model can be in, as ``GET /v1/registry/status`` reports them.
READY, LOADING, FAILED, UNAVAILABLE = "ready", "loading", "failed", "unavailable"


@dataclass(slots=True)
class ModelStatus:
    id: str
    source: str  # "local", "echo" or the provider's name
    state: str = READY
    reason: str | None = None
    context_length: int | None = None


@dataclass(slots=True)
class ProviderStatus:
    name: str
    configured: bool
    circuit: str = "closed"  # closed | open | half_open
    reason: str | None = None


@dataclass(slots=True)
class BackendStatus:
    models: list[ModelStatus]
    provider: ProviderStatus | None = None
    # Extra top-level sections of the registry status (e.g. ``local_engine``).
    sections: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Load:
    """Live state routing reads before picking a model (see :meth:`Backend.load`)."""

    circuit: str = "closed"  # closed | open | half_open (remote providers' breaker)
    queue: int = 0  # requests waiting or running on this model here (the local engine)
    latency_s: float | None = None  # recent typical time to first byte, when measured


IDLE = Load()


class Backend(abc.ABC):
    """A place a chat request can run. ``name`` labels metrics and logs (never a secret)."""

    name: str = "backend"
    # True for backends that run on this box's own GPU: routing's "@local" stands for their models.
    local: bool = False

    @abc.abstractmethod
    def models(self) -> list[ModelCard]:
        """Models this backend serves now, under the names clients use."""

    def resolve(self, name: str) -> str | None:
        """The backend's own id for the client-facing model ``name``, or None if not served here."""
        return name if any(card.id == name for card in self.models()) else None

    @abc.abstractmethod
    async def complete(self, request: ChatRequest, model: str) -> Completion:
        """Runs ``request`` on ``model`` (the backend's own model id) and returns the whole answer."""

    @abc.abstractmethod
    def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        """Runs ``request`` and yields pieces as they come; cancelling the consumer aborts it."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Called once on the server's event loop before the first request."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Called once at shutdown; release connections and engines here."""

    def status(self) -> BackendStatus:
        """What the registry reports for this backend; remote providers add their circuit state."""
        return BackendStatus(
            models=[
                ModelStatus(c.id, self.name, READY, context_length=c.context_length)
                for c in self.models()
            ]
        )

    async def refresh(self) -> None:  # noqa: B027 - optional hook
        """Re-reads what can change at run time (model folders, a provider's model list)."""

    def degraded(self) -> list[str]:
        """Reasons this backend is broken now (a dead engine); non-empty makes /health degraded."""
        return []

    def count_tokens(self, model: str, text: str) -> int | None:
        """Tokens of ``text`` in ``model``'s own tokenizer, or None when this backend has none."""
        return None

    def load(self, model: str) -> Load:
        """Circuit state, queue depth and recent latency of ``model`` here, for routing."""
        return IDLE
