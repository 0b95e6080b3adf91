"""OpenAI chat-completions wire types: request validation and response bodies.

Kept apart from serving logic (as vLLM's ``entrypoints/openai/protocol.py`` is) so that backends,
the job store and the OpenAPI document share one definition. Validation follows OpenAI's own
rules; unknown top-level fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from iir.core.errors import ApiError, bad_request, shown

Role = Literal["system", "developer", "user", "assistant", "tool"]


def _whole(value: Any) -> Any:
    """JSON has one number type: ``2.0`` is the integer 2 to JSON Schema (and so to the document),
    so it is accepted where an integer is; ``2.5``, strings and booleans are still refused.

    Only up to 2**53, where floats stop being exact: orjson reads integers beyond 64 bits as
    floats, and -2**63 - 1 would otherwise come out as -2**63, inside a bound it is not in."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return value


#: Largest ``max_tokens``/``max_completion_tokens``: far above any model's context, far below
#: what would overflow a limiter's arithmetic or an integer in JSON.
MAX_OUTPUT_TOKENS = 2**24

# Integer fields of a request: strict, but a float with no fraction counts (see ``_whole``).
# Every one is bounded, inside the validator so that the document shows ``minimum``/``maximum``:
# JSON parsers (orjson here) turn integers beyond 64 bits into floats, and back out nothing can
# write them, so a number the document allows must fit.
#: The validator of every integer field: ``Annotated[int, Field(ge=.., le=..), Whole]`` where
#: none of the types below has the bounds.
Whole = BeforeValidator(_whole)
#: A seed: a signed 64-bit integer, as the engines take it.
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1), Whole]
#: A number of tokens to generate.
TokenCount = Annotated[int, Field(ge=1, le=MAX_OUTPUT_TOKENS), Whole]
ChoiceCount = Annotated[int, Field(ge=1, le=128), Whole]
TopLogprobs = Annotated[int, Field(ge=0, le=20), Whole]


class StrictModel(BaseModel):
    """Strict types (no "1" for 1); unknown fields ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(BaseModel):
    """A text part of a multi-part message."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["text"]
    text: str


class OtherPart(BaseModel):
    """Any other part; its type-specific fields pass through untouched to the backend."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["image_url", "input_audio", "file", "refusal"]
    text: str | None = None


#: One part of a multi-part message, told apart by its ``type``.
ContentPart = Annotated[TextPart | OtherPart, Field(discriminator="type")]
Content = str | list[ContentPart]


class FunctionCall(StrictModel):
    name: str
    arguments: str


class ToolCall(StrictModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class MessageBase(StrictModel):
    """What every message may carry; each role's model below says what it must carry.

    Every role keeps every field (``None`` when absent), so code reading a message never needs
    to know its role first; the per-role models make the document say exactly what is accepted.
    """

    role: Role
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message's text: the string, or its text parts joined."""
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "".join(p.text or "" for p in self.content if p.type == "text")


class SystemMessage(MessageBase):
    role: Literal["system"]
    content: Content


class DeveloperMessage(MessageBase):
    role: Literal["developer"]
    content: Content


class UserMessage(MessageBase):
    role: Literal["user"]
    content: Content


class AssistantMessage(MessageBase):
    """An earlier answer: its text, its tool calls, or both (``content`` may be null only when
    there are tool calls)."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
                {
                    "required": ["tool_calls"],
                    "properties": {"tool_calls": {"type": "array", "minItems": 1}},
                },
            ]
        }
    )
    role: Literal["assistant"]

    @model_validator(mode="after")
    def _content_or_tool_calls(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls:
            raise ValueError("an 'assistant' message needs 'content' or 'tool_calls'")
        return self


class ToolMessage(MessageBase):
    """A tool's result, answering the call ``tool_call_id``."""

    role: Literal["tool"]
    content: Content
    tool_call_id: str


#: One chat message, told apart by its ``role``.
Message = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage,
    Field(discriminator="role"),
]
#: The tags in a validation error's location (a role, a part type): not field names.
_TAGS = frozenset(
    {
        *("system", "developer", "user", "assistant", "tool"),  # roles
        *("text", "image_url", "input_audio", "file", "refusal"),  # content part types
    }
)


class StreamOptions(StrictModel):
    include_usage: bool = False


class ChatRequest(StrictModel):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: ChoiceCount = 1
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: Seed | None = None
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    logit_bias: dict[str, float] | None = None
    metadata: dict[str, str] | None = None

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
    """A location as OpenAI's ``param`` names it: ``messages[0].content``, ``input.prompt``."""
    out = ""
    after_index = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            after_index = True
            continue
        tag = after_index and part in _TAGS  # a discriminated union's tag follows its index
        after_index = False
        if tag or _is_branch(part) or part.startswith("tag:"):  # "tag:": callable unions' tags
            continue
        # A part may be a key of a client's object (``metadata``, ``logit_bias``): cut it.
        out += ("." if out else "") + shown(part, 64)
    return shown(out, 256) or "body"


def _is_branch(part: str) -> bool:
    """A union member or validator in an error location (``str``, ``list[...]``), not a field."""
    return part in ("str", "constrained-list") or part.startswith("function-") or "[" in part


def validation_error(exc: ValidationError) -> ApiError:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    loc = tuple(first["loc"])
    branch = next((i for i, p in enumerate(loc) if isinstance(p, str) and _is_branch(p)), None)
    if branch is not None:
        # A value that fits no member of a union (``str | list[...]``): each member has its
        # error; the one that got furthest into the value says most (``content[1].text``).
        same = [e for e in errors if tuple(e["loc"])[:branch] == loc[:branch]]
        first = max(same, key=lambda e: len(e["loc"]))
        loc = tuple(first["loc"])
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        # A bad or missing role (or part type): name the field that decides, not the object.
        discriminator = str((first.get("ctx") or {}).get("discriminator", "")).strip("'")
        if discriminator.isidentifier():
            loc += (discriminator,)
    param = _param(loc)
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return bad_request(f"Invalid value for '{param}': {msg}", param=param)


def as_validated(body: dict[str, Any], req: BaseModel) -> dict[str, Any]:
    """``body`` with each integer field a client gave as a whole float (``2.0``) written back as
    the integer validation made of it: backends that take a surface's body natively (and the
    providers they pass it to) read the numbers validation read. Changes ``body`` in place."""
    for name in type(req).model_fields:
        value = getattr(req, name)
        if type(value) is int and isinstance(body.get(name), float):
            body[name] = value
    return body


def parse_chat_request(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object", param="body")
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


# --- other surfaces' requests as backends see them -------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScrubbedBody:
    """A surface's own request body after the scrub step, for a backend that speaks the surface
    natively (OpenAI's Responses API, Anthropic's Messages API, legacy completions).

    Like :class:`ScrubbedChat` it is built only in :mod:`iir.service.pipeline`, from the scrubbed
    body; ``headers`` are the client headers the surface passes on (``anthropic-beta``),
    scrubbed too. Backends copy ``body`` before they change anything in it.
    """

    surface: str
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=2**31 - 1), Whole]], Field(min_length=1)]


class EmbeddingsRequest(StrictModel):
    """OpenAI's ``POST /v1/embeddings`` body."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=2048)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=2048)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1, le=65536), Whole] | None = None
    user: str | None = None

    @property
    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as a list: texts, or token-id arrays."""
        value: Any = self.input
        if isinstance(value, str) or (value and isinstance(value[0], int)):
            return [value]
        return value  # type: ignore[no-any-return]


class ScrubbedEmbeddings(EmbeddingsRequest):
    """An embeddings request validated from a scrubbed body: the only one ``embed()`` accepts
    (built, like :class:`ScrubbedChat`, only in :mod:`iir.service.pipeline`)."""
