"""``/infer``'s wire types: a named model, an ``input`` (chat messages or one prompt), sampling
fields at either level, and a compact answer."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from iir.core.protocol import Message, Seed, StrictModel, TokenCount, validation_error

SAMPLING = ("max_tokens", "temperature", "top_p", "stop", "seed")


class _Sampling(StrictModel):
    max_tokens: TokenCount | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: Seed | None = None


class _InferInput(_Sampling):
    model_config = ConfigDict(extra="forbid", strict=True)


class InferMessages(_InferInput):
    """Chat ``messages``; sampling fields may sit here too."""

    messages: Annotated[list[Message], Field(min_length=1)]


class InferPrompt(_InferInput):
    """One ``prompt`` (a single user turn); sampling fields may sit here too."""

    prompt: str


def _input_kind(value: Any) -> str | None:
    """Which of the two shapes an ``input`` object is: the one whose field it holds."""
    if isinstance(value, InferMessages | InferPrompt):
        return "tag:messages" if isinstance(value, InferMessages) else "tag:prompt"
    if not isinstance(value, dict):
        return None
    has_messages, has_prompt = "messages" in value, "prompt" in value
    if has_messages == has_prompt:
        return None
    return "tag:messages" if has_messages else "tag:prompt"


#: Either ``messages`` (chat) or ``prompt`` (one user turn), never both.
InferInput = Annotated[
    Annotated[InferMessages, Tag("tag:messages")] | Annotated[InferPrompt, Tag("tag:prompt")],
    Discriminator(
        _input_kind,
        custom_error_type="input_shape",
        custom_error_message="give exactly one of 'messages' (a list) or 'prompt' (a string)",
    ),
]


class InferRequest(_Sampling):
    """A named model and an ``input``. Sampling fields may sit here or in ``input``; given in
    both, the value in ``input`` is used."""

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
        # Given at both levels, the one in ``input`` (the more specific) is used: a rule the
        # document can state, where a refusal of different values could not be described in it.
        inner = getattr(req.input, name)
        value = inner if inner is not None else getattr(req, name)
        if value is not None:
            chat[name] = value
    if isinstance(req.input, InferMessages):
        chat["messages"] = body["input"]["messages"]
    else:
        chat["messages"] = [{"role": "user", "content": req.input.prompt}]
    return chat
