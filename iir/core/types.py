"""The neutral data every layer shares: what a backend answers and what state a model is in.

A backend turns a request into a whole :class:`Completion` or a stream of :class:`Delta` pieces
followed by one optional :class:`Usage`; ids, timestamps, wire formats, scrubbing and metrics are
the service's job, so these types only speak about content. Routing reads :class:`Load` and the
registry reports :class:`ModelStatus`, without either layer importing the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class ModelCard:
    id: str
    owned_by: str
    created: int = 0
    context_length: int | None = None
    #: The fleet's other boxes that serve it (``host:port``), for a model a peer serves.
    boxes: tuple[str, ...] = ()


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


class ModelSource(Protocol):
    """What routing needs to know about the models that can be served (the model registry)."""

    def local_cards(self) -> list[ModelCard]:
        """Models served by this box's own engine (routing's ``@local``)."""
        ...

    def peer_cards(self) -> list[ModelCard]:
        """Models the fleet's other boxes serve on their own engines (``@local`` too)."""
        ...

    def load_probe(self, name: str) -> Callable[[], Load] | None:
        """A function reading ``name``'s live load, or None when nothing serves ``name``."""
        ...
