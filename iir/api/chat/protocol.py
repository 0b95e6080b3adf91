"""Chat completions' answer shapes, as OpenAI's schema has them (for ``/openapi.json``).

The request is :class:`iir.core.protocol.ChatRequest`, the canonical request every surface
translates into. Answers are built as plain dicts on the hot path (:mod:`.serving`); these models
document them, and the schema tests hold the two together.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class Usage(_Doc):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponseMessage(_Doc):
    """The answer's message (OpenAI's schema of the same name; not the request's
    ``AssistantMessage``)."""

    role: Literal["assistant"]
    content: str | None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class CompletionChoice(_Doc):
    index: int
    message: ChatCompletionResponseMessage
    logprobs: dict[str, Any] | None
    finish_reason: str


class ChatCompletion(_Doc):
    """A whole answer (``stream`` false)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ChunkDelta(_Doc):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(_Doc):
    index: int
    delta: ChunkDelta
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_Doc):
    """One ``data:`` frame of a stream: chunks, an optional usage chunk with ``choices: []``,
    then ``data: [DONE]``; a failure mid-stream sends ``{"error": {...}}`` before ``[DONE]``."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
