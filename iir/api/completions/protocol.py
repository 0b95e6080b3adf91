"""Legacy completions' wire types (``POST /v1/completions``): the request, validated and turned
into the canonical chat request that admission and routing read, and the answer shapes.

The prompt itself goes to the backend as it is (scrubbed): legacy completions continue text, with
no chat template, so only backends that speak them natively serve them (the local engine,
``iir/echo``, OpenAI-compatible providers).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from iir.core.protocol import (
    ChoiceCount,
    Seed,
    StreamOptions,
    StrictModel,
    TokenCount,
    Whole,
    as_validated,
    validation_error,
)

#: OpenAI's default output budget for legacy completions.
DEFAULT_MAX_TOKENS = 16


class CompletionRequest(StrictModel):
    """``POST /v1/completions``; prompts are strings (token-id prompts are not taken)."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=128)]
    suffix: str | None = None
    max_tokens: TokenCount | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: ChoiceCount = 1
    best_of: Annotated[int, Field(ge=1, le=20), Whole] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Annotated[int, Field(ge=0, le=5), Whole] | None = None
    echo: bool = False
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[str, float] | None = None
    seed: Seed | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _choices(self) -> CompletionRequest:
        if len(self.prompts) * self.n > 128:
            raise ValueError("the prompts times 'n' must be at most 128 choices")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


_SAMPLING = (
    "temperature",
    "top_p",
    "stop",
    "seed",
    "user",
    "presence_penalty",
    "frequency_penalty",
)


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The canonical chat body a (scrubbed) legacy body stands for: one user turn per prompt,
    every choice's budget (400 naming the field)."""
    try:
        req = CompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
    as_validated(body, req)
    chat: dict[str, Any] = {
        "model": req.model,
        "messages": [{"role": "user", "content": p} for p in req.prompts],
        "max_tokens": req.max_tokens or DEFAULT_MAX_TOKENS,
        "n": req.n * len(req.prompts),
        "stream": req.stream,
    }
    for name in _SAMPLING:
        value = getattr(req, name)
        if value is not None:
            chat[name] = value
    if req.stream_options is not None:
        chat["stream_options"] = req.stream_options.model_dump()
    return chat


# --- answers (documented; built as plain dicts in serving) ---------------------------------------


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextCompletionChoice(_Doc):
    text: str
    index: int
    logprobs: dict[str, Any] | None
    finish_reason: Literal["stop", "length", "content_filter"] | None


class CompletionUsage(_Doc):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TextCompletion(_Doc):
    """The answer, and (with ``stream``) each ``data:`` frame before ``[DONE]``."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextCompletionChoice]
    usage: CompletionUsage | None = None
