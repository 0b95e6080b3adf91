"""``/v1/embeddings``' answer shapes, as OpenAI's schema has them (for ``/openapi.json``).

The request is :class:`iir.core.protocol.EmbeddingsRequest` (validated by the pipeline as the
scrubbed :class:`~iir.core.protocol.ScrubbedEmbeddings`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class Embedding(_Doc):
    object: Literal["embedding"]
    index: int
    #: Floats, or with ``encoding_format: "base64"`` the little-endian float32 bytes in base64.
    embedding: list[float] | str


class EmbeddingsUsage(_Doc):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(_Doc):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage
