"""``iir/echo-embed``: a deterministic built-in embedding model.

Each input becomes a unit vector by feature hashing (the hashing trick): every word (or token id)
adds ±1 to one of ``dimensions`` buckets picked by its BLAKE2b hash. Texts that share words point
the same way, so retrieval code can be tested end to end on a fresh box with no model and no
network, and the same text always gives the same vector.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import AsyncIterator

from iir.backends.base import Backend, cannot_serve
from iir.core.protocol import ScrubbedChat, ScrubbedEmbeddings
from iir.core.types import CHAT, EMBEDDINGS, Completion, Embeddings, ModelCard, StreamEvent

MODEL = "iir/echo-embed"
DIMENSIONS = 256

_WORD = re.compile(r"\w+")


def vector(item: str | list[int], dimensions: int = DIMENSIONS) -> list[float]:
    """The unit vector of one input (a text, or token ids)."""
    if isinstance(item, str):
        features = [w.lower() for w in _WORD.findall(item)] or [item]
    else:
        features = [str(i) for i in item]
    v = [0.0] * dimensions
    for feature in features:
        digest = hashlib.blake2b(feature.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        n = int.from_bytes(digest, "little")
        v[n % dimensions] += 1.0 if n >> 63 else -1.0
    norm = math.sqrt(sum(x * x for x in v))
    if norm == 0.0:  # every feature cancelled out: still a unit vector, still deterministic
        v[0], norm = 1.0, 1.0
    return [x / norm for x in v]


class EchoEmbedBackend(Backend):
    name = "echo-embed"

    def models(self) -> list[ModelCard]:
        return [ModelCard(id=MODEL, owned_by="iir", created=1_700_000_000)]

    def capabilities(self, model: str) -> frozenset[str]:
        return frozenset({EMBEDDINGS})

    async def complete(self, request: ScrubbedChat, model: str) -> Completion:
        raise cannot_serve(self.name, CHAT)  # the route step never sends one

    def stream(self, request: ScrubbedChat, model: str) -> AsyncIterator[StreamEvent]:
        raise cannot_serve(self.name, CHAT)

    async def embed(self, request: ScrubbedEmbeddings, model: str) -> Embeddings:
        dimensions = request.dimensions or DIMENSIONS
        return Embeddings([vector(item, dimensions) for item in request.inputs])
