"""The one interface every backend implements.

A backend turns a :class:`~iir.core.protocol.ScrubbedChat` (validated, and scrubbed by the
request pipeline: the only request type a backend accepts) into either a whole
:class:`~iir.core.types.Completion` or an async stream of :class:`~iir.core.types.Delta` pieces
followed by one optional :class:`~iir.core.types.Usage`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from typing import ClassVar

from iir.core.protocol import ScrubbedChat
from iir.core.types import (
    IDLE,
    READY,
    BackendStatus,
    Completion,
    Load,
    ModelCard,
    ModelStatus,
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
