"""The embeddings answer: one ``embedding`` object per input, in input order."""

from __future__ import annotations

import base64
import struct
from typing import Any

from iir.service.pipeline import EmbeddingsAnswer


def _base64(vector: list[float]) -> str:
    """The vector as OpenAI sends it with ``encoding_format: "base64"``: float32, little-endian."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def embeddings_body(answer: EmbeddingsAnswer, encoding: str) -> dict[str, Any]:
    vectors = answer.embeddings.vectors
    usage = answer.embeddings.usage
    prompt = usage.prompt_tokens if usage is not None else 0
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": i,
                "embedding": _base64(v) if encoding == "base64" else v,
            }
            for i, v in enumerate(vectors)
        ],
        "model": answer.model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }
