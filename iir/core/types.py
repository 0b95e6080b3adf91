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


# --- API surfaces -----------------------------------------------------------------------------

# What a model can serve, route by route (``GET /v1/models`` lists them per model).
CHAT, RESPONSES, MESSAGES, COMPLETIONS, EMBEDDINGS = (
    "chat",
    "responses",
    "messages",
    "completions",
    "embeddings",
)
#: Surfaces every chat model serves: the request is translated into a chat request.
TRANSLATED = frozenset({CHAT, RESPONSES, MESSAGES})
#: The path each surface answers on, for error messages.
SURFACE_PATHS = {
    CHAT: "/v1/chat/completions",
    RESPONSES: "/v1/responses",
    MESSAGES: "/v1/messages",
    COMPLETIONS: "/v1/completions",
    EMBEDDINGS: "/v1/embeddings",
}


@dataclass(slots=True)
class NativeAnswer:
    """A whole answer in the surface's own wire format, from a backend that speaks it natively
    (OpenAI's Responses API, Anthropic's Messages API), with the usage it reported."""

    body: dict[str, Any]
    usage: Usage | None = None


@dataclass(slots=True)
class NativeEvent:
    """One event of a native stream, with what the answer scrubber needs to know about it.

    ``stream`` and ``path`` mark an event that carries a piece of streamed text: the key of the
    text it belongs to (one stream scrubber per key, so a secret split across events is still
    caught) and where the piece sits in ``data``. ``closes`` lists the keys whose text ends
    with this event: what their scrubbers held back is released just before it.
    """

    name: str
    data: dict[str, Any]
    stream: tuple[Any, ...] | None = None
    path: tuple[str, ...] = ()
    closes: tuple[tuple[Any, ...], ...] = ()


#: What a streamed answer yields: neutral pieces and usage, or native events.
AnswerEvent = Delta | Usage | NativeEvent


@dataclass(slots=True)
class Embeddings:
    """One vector per input, in input order."""

    vectors: list[list[float]]
    usage: Usage | None = None
