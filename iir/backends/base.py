"""The one interface every backend implements.

A backend turns a :class:`~iir.core.protocol.ScrubbedChat` (validated, and scrubbed by the
request pipeline: the only request type a backend accepts) into either a whole
:class:`~iir.core.types.Completion` or an async stream of :class:`~iir.core.types.Delta` pieces
followed by one optional :class:`~iir.core.types.Usage`.

Surfaces other than chat reach a backend in one of two ways: translated into the chat request
(every chat model serves ``/v1/responses`` and ``/v1/messages`` so), or natively, when
:meth:`Backend.speaks` the surface: :meth:`Backend.complete_native` and
:meth:`Backend.stream_native` then take the surface's own scrubbed body
(:class:`~iir.core.protocol.ScrubbedBody`). Embedding models answer :meth:`Backend.embed`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from typing import ClassVar

from iir.core.errors import ApiError
from iir.core.protocol import ScrubbedBody, ScrubbedChat, ScrubbedEmbeddings
from iir.core.types import (
    IDLE,
    READY,
    SURFACE_PATHS,
    TRANSLATED,
    BackendStatus,
    Completion,
    Embeddings,
    Load,
    ModelCard,
    ModelStatus,
    NativeAnswer,
    NativeEvent,
    StreamEvent,
)


class Backend(abc.ABC):
    """A place a chat request can run. ``name`` labels metrics and logs (never a secret)."""

    name: ClassVar[str] = "backend"
    # True for backends that run on this box's own GPU: routing's "@local" stands for their models.
    local: bool = False
    # True for the fleet's other boxes (iir.backends.peers): routing's "@local" stands for their
    # GPU models too, and a request they forwarded here is never sent to one of them.
    peer: bool = False

    @abc.abstractmethod
    def models(self) -> list[ModelCard]:
        """Models this backend serves now, under the names clients use."""

    def resolve(self, name: str) -> str | None:
        """The backend's own id for the client-facing model ``name``, or None if not served here."""
        return name if any(card.id == name for card in self.models()) else None

    @abc.abstractmethod
    async def complete(self, request: ScrubbedChat, model: str) -> Completion:
        """Runs ``request`` on ``model`` (the backend's own model id) and returns the whole answer."""

    @abc.abstractmethod
    def stream(self, request: ScrubbedChat, model: str) -> AsyncIterator[StreamEvent]:
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

    # --- other surfaces -----------------------------------------------------------------------

    def capabilities(self, model: str) -> frozenset[str]:
        """The API surfaces ``model`` (the backend's own id) can serve; see ``iir.core.types``."""
        return TRANSLATED

    def speaks(self, surface: str, model: str) -> bool:
        """Whether ``surface``'s own request goes to ``model`` as it is (no translation)."""
        return False

    async def complete_native(self, request: ScrubbedBody, model: str) -> Completion | NativeAnswer:
        """Runs a surface's own request (see :meth:`speaks`): neutral choices or a native answer."""
        raise cannot_serve(self.name, request.surface)

    def stream_native(
        self, request: ScrubbedBody, model: str
    ) -> AsyncIterator[StreamEvent | NativeEvent]:
        """Streams a surface's own request: neutral pieces or native events, then a Usage."""
        raise cannot_serve(self.name, request.surface)

    async def embed(self, request: ScrubbedEmbeddings, model: str) -> Embeddings:
        """One vector per input of ``request``."""
        raise cannot_serve(self.name, "embeddings")


def cannot_serve(backend: str, surface: str) -> ApiError:
    path = SURFACE_PATHS.get(surface, surface)
    return ApiError(400, f"The {backend} backend cannot serve {path}", code="model_not_supported")
