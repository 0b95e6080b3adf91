"""OpenAI chat-completions wire types: request validation and response bodies.

Kept apart from serving logic (as vLLM's ``entrypoints/openai/protocol.py`` is) so that backends,
the job store and the OpenAPI document share one definition. Validation follows OpenAI's own
rules; unknown top-level fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from iir.core.errors import ApiError, bad_request, shown

Role = Literal["system", "developer", "user", "assistant", "tool"]


class StrictModel(BaseModel):
    """Strict types (no "1" for 1); unknown fields ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore", strict=True)


class ContentPart(BaseModel):
    """One part of a multi-part message; the type-specific fields pass through untouched."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["text", "image_url", "input_audio", "file", "refusal"]
    text: str | None = None

    @model_validator(mode="after")
    def _text_parts_have_text(self) -> ContentPart:
        if self.type in ("text", "refusal") and self.text is None and self.type == "text":
            raise ValueError("a text content part needs a 'text' string")
        return self


class FunctionCall(StrictModel):
    name: str
    arguments: str


class ToolCall(StrictModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(StrictModel):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_rules(self) -> Message:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a '{self.role}' message needs 'content'")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs 'tool_call_id'")
        return self

    def text(self) -> str:
        """The message's text: the string, or its text parts joined."""
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "".join(p.text or "" for p in self.content if p.type == "text")


class StreamOptions(StrictModel):
    include_usage: bool = False


class ChatRequest(StrictModel):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] = 1
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    logit_bias: dict[str, float] | None = None
    metadata: dict[str, str] | None = None

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, v: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(v, str) and v not in ("none", "auto", "required"):
            raise ValueError("must be 'none', 'auto', 'required' or a named tool object")
        return v

    @property
    def output_limit(self) -> int | None:
        """The requested completion budget, whichever of the two fields carried it."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ScrubbedChat(ChatRequest):
    """A chat request validated from a body that went through the secret scrubber.

    The only request type a backend accepts. It is built in one place,
    :meth:`iir.service.pipeline.Pipeline.parse`, right after the scrub step (an architecture test
    keeps it so), so no code path can hand a backend text that was not scrubbed.
    """


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in (
            "str",
            "list[ContentPart]",
            "list[str]",
            "function-after[_content_rules()]",
            "constrained-list",
            "function-after[_text_parts_have_text()]",
        ) or (isinstance(part, str) and (part.startswith("function-") or "[" in part)):
            continue
        else:
            # A part may be a key of a client's object (``metadata``, ``logit_bias``): cut it.
            out += ("." if out else "") + shown(part, 64)
    return shown(out, 256) or "body"


def validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    param = _param(tuple(first["loc"]))
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return bad_request(f"Invalid value for '{param}': {msg}", param=param)


def parse_chat_request(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object", param="body")
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
