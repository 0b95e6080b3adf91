"""``/infer``'s wire types: a named model, an ``input`` (chat messages or one prompt), sampling
fields at either level, and a compact answer."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from iir.core.errors import bad_request
from iir.core.protocol import MAX_OUTPUT_TOKENS, Message, StrictModel, validation_error

SAMPLING = ("max_tokens", "temperature", "top_p", "stop", "seed")


class _Sampling(StrictModel):
    max_tokens: Annotated[int, Field(ge=1, le=MAX_OUTPUT_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None


class InferInput(_Sampling):
    """Either ``messages`` (chat) or ``prompt`` (one user turn); sampling fields may sit here too."""

    model_config = ConfigDict(extra="forbid", strict=True)
    messages: Annotated[list[Message], Field(min_length=1)] | None = None
    prompt: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> InferInput:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' (a list) or 'prompt' (a string)")
        return self


class InferRequest(_Sampling):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: InferInput
    async_: bool = False


class InferOutput(BaseModel):
    text: str
    finish_reason: str | None


class InferUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class InferResponse(BaseModel):
    id: str
    model: str
    output: InferOutput
    usage: InferUsage | None = None


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The canonical chat body an ``/infer`` body stands for (400 naming the field)."""
    try:
        req = InferRequest.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
    chat: dict[str, Any] = {"model": req.model}
    for name in SAMPLING:
        outer, inner = getattr(req, name), getattr(req.input, name)
        if outer is not None and inner is not None and outer != inner:
            raise bad_request(
                f"'{name}' is given both at the top level and in 'input' with different values",
                param=f"input.{name}",
            )
        value = outer if outer is not None else inner
        if value is not None:
            chat[name] = value
    if req.input.messages is not None:
        chat["messages"] = body["input"]["messages"]
    else:
        chat["messages"] = [{"role": "user", "content": req.input.prompt}]
    return chat
