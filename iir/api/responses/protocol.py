"""OpenAI Responses API wire types: the request (validated and translated into the canonical chat
request), the ``response`` object, its items and its stream events.

Fields that clients send routinely and that do not change a plain answer (``include``,
``truncation``, ``service_tier``, ``prompt_cache_key``, ``reasoning``, ``stream_options``) are
accepted. What only OpenAI itself can honour (built-in tools such as ``web_search``, custom tools,
``conversation`` objects, prompt templates, file inputs, items of OpenAI's own tools) is passed
on to ``openai/`` models, which take the request natively, and refused with a 400 naming the field
for every other model (:func:`native_only`). The request models (and so ``/openapi.json``) say
what every model accepts: those extras are not in them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from iir.core.ids import random_hex
from iir.core.protocol import TokenCount, TopLogprobs, Whole, as_validated, validation_error

# --- the request ---------------------------------------------------------------------------------


class _Part(BaseModel):
    """Strict types; fields IIR does not read are kept (and passed on natively)."""

    model_config = ConfigDict(extra="allow", strict=True)


class InputText(_Part):
    type: Literal["input_text"]
    text: str


class InputImage(_Part):
    """An image by URL (or data URL). Images by ``file_id`` alone are OpenAI's own: they go to
    ``openai/`` models only, and are not in this schema."""

    type: Literal["input_image"]
    image_url: Annotated[str, Field(min_length=1)]
    file_id: str | None = None
    detail: Literal["low", "high", "auto"] | None = None


class OutputText(_Part):
    type: Literal["output_text"]
    text: str


class Refusal(_Part):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[InputText | InputImage | OutputText | Refusal, Field(discriminator="type")]


class MessageItem(_Part):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    id: str | None = None


CallId = Annotated[str, Field(min_length=1)]


class FunctionCallItem(_Part):
    type: Literal["function_call"]
    call_id: CallId
    name: str
    arguments: str
    id: str | None = None


class FunctionCallOutputItem(_Part):
    type: Literal["function_call_output"]
    call_id: CallId
    output: str | list[ContentPart]
    id: str | None = None


class ReasoningItem(_Part):
    """A reasoning model's earlier reasoning: passed on natively, left out of a translation."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[Any] = []


def _item_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type")
        return kind if isinstance(kind, str) else ("message" if "role" in value else None)
    return getattr(value, "type", None)


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_kind),
]
ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")


class FunctionTool(_Part):
    type: Literal["function"]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceFunction(_Part):
    type: Literal["function"]
    name: str


class TextFormat(_Part):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextParam(_Part):
    format: TextFormat | None = None
    verbosity: str | None = None


class ResponsesRequest(BaseModel):
    """``POST /v1/responses``. Unknown fields are ignored, as OpenAI-compatible servers do.

    A background response is stored and not streamed (the document says so in ``anyOf``)."""

    model_config = ConfigDict(
        extra="ignore",
        strict=True,
        json_schema_extra={
            "anyOf": [
                {"properties": {"background": {"const": False}}},
                {"properties": {"store": {"const": True}, "stream": {"const": False}}},
            ]
        },
    )

    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: str | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: TokenCount | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    background: bool = False
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: Annotated[dict[str, str], Field(max_length=16)] | None = None
    user: str | None = None
    # Accepted; they do not change a translated answer (and go on as they are natively).
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    reasoning: dict[str, Any] | None = None
    stream_options: dict[str, Any] | None = None
    top_logprobs: TopLogprobs | None = None
    max_tool_calls: Annotated[int, Field(ge=0, le=2**31 - 1), Whole] | None = None

    @field_validator("stream", "store")
    @classmethod
    def _background(cls, value: bool, info: ValidationInfo) -> bool:
        """A background response is polled, so it is stored and not streamed (400 naming the
        field that says otherwise)."""
        streamed = info.field_name == "stream"
        if info.data.get("background") is True and (value if streamed else not value):
            fix = "drop 'stream'" if streamed else "drop 'store: false'"
            raise ValueError(f"a background response is stored and not streamed; {fix}")
        return value


def native_only(body: dict[str, Any]) -> tuple[str, str] | None:
    """The first field of ``body`` only a model that takes the Responses API natively honours,
    as ``(param, what)``; None when every model can serve the request."""
    for name in ("conversation", "prompt"):
        if body.get(name) is not None:
            return name, f"'{name}' objects"
    tools = body.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                return f"tools[{i}].type", f"the built-in tool '{kind}'"
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") != "function":
        return "tool_choice.type", f"tool_choice '{choice.get('type')}'"
    items = body.get("input")
    if isinstance(items, list):
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            kind = _item_kind(item)
            if kind is not None and kind not in ITEM_TYPES:
                return f"input[{i}].type", f"'{kind}' items"
            content = item.get("content", item.get("output"))
            if isinstance(content, list):
                for j, part in enumerate(content):
                    ptype = part.get("type") if isinstance(part, dict) else None
                    if ptype in ("input_file", "input_audio"):
                        return f"input[{i}].content[{j}].type", f"'{ptype}' parts"
                    if ptype == "input_image" and not part.get("image_url"):
                        return f"input[{i}].content[{j}]", "images given by 'file_id'"
    return None


# --- translation into the canonical chat request --------------------------------------------------


def _text(content: str | list[Any]) -> str:
    if isinstance(content, str):
        return content
    return "".join(
        p.text if isinstance(p, InputText | OutputText) else p.refusal
        for p in content
        if isinstance(p, InputText | OutputText | Refusal)
    )


def _parts(content: str | list[Any]) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    out: list[dict[str, Any]] = []
    for p in content:
        if isinstance(p, InputImage):
            if not p.image_url:
                continue  # file ids: native_only() keeps these requests away from translation
            image: dict[str, Any] = {"url": p.image_url}
            if p.detail:
                image["detail"] = p.detail
            out.append({"type": "image_url", "image_url": image})
        else:
            out.append({"type": "text", "text": _text([p])})
    return out


def _add(messages: list[dict[str, Any]], item: Any) -> None:
    if isinstance(item, MessageItem):
        if item.role == "assistant":
            messages.append({"role": "assistant", "content": _text(item.content)})
        elif item.role == "user":
            messages.append({"role": "user", "content": _parts(item.content)})
        else:
            messages.append({"role": item.role, "content": _text(item.content)})
    elif isinstance(item, FunctionCallItem):
        call = {
            "id": item.call_id,
            "type": "function",
            "function": {"name": item.name, "arguments": item.arguments},
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
            if not last.get("content"):
                last["content"] = None
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif isinstance(item, FunctionCallOutputItem):
        messages.append(
            {"role": "tool", "tool_call_id": item.call_id, "content": _text(item.output)}
        )
    # reasoning items have no chat counterpart


def _translatable(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` without what only a native backend honours (:func:`native_only` keeps such
    requests from every other backend, with a 400 naming the field)."""
    out = dict(body)
    tools = body.get("tools")
    if isinstance(tools, list):
        out["tools"] = [t for t in tools if isinstance(t, dict) and t.get("type") == "function"]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") != "function":
        del out["tool_choice"]
    items = body.get("input")
    if isinstance(items, list):
        kept = []
        for item in items:
            if isinstance(item, dict) and _item_kind(item) not in (None, *ITEM_TYPES):
                continue
            for field in ("content", "output"):
                parts = item.get(field) if isinstance(item, dict) else None
                if isinstance(parts, list):
                    item = {**item, field: [p for p in parts if _translatable_part(p)]}
            kept.append(item)
        # Only native items: a placeholder turn (routing keeps the request to native backends).
        out["input"] = kept if kept or not items else ""
    return out


def _translatable_part(part: Any) -> bool:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_file", "input_audio"):
        return False
    return not (kind == "input_image" and not part.get("image_url"))


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The canonical chat body a (scrubbed) Responses body stands for (400 naming the field)."""
    try:
        req = ResponsesRequest.model_validate(_translatable(body))
    except ValidationError as exc:
        raise validation_error(exc) from None
    as_validated(body, req)
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
    else:
        for item in req.input:
            _add(messages, item)
    if not any(m["role"] != "system" for m in messages):
        # Only items with no chat counterpart (reasoning; or native ones, which routing keeps
        # to native backends, taking the body as it is): the canonical request needs a turn.
        messages.append({"role": "user", "content": ""})
    chat: dict[str, Any] = {"model": req.model, "messages": messages, "stream": req.stream}
    if req.max_output_tokens is not None:
        chat["max_tokens"] = req.max_output_tokens
    for name in ("temperature", "top_p", "user", "parallel_tool_calls"):
        value = getattr(req, name)
        if value is not None:
            chat[name] = value
    if req.tools:
        chat["tools"] = [
            {
                "type": "function",
                "function": {
                    k: v
                    for k, v in (
                        ("name", t.name),
                        ("description", t.description),
                        ("parameters", t.parameters),
                        ("strict", t.strict),
                    )
                    if v is not None
                },
            }
            for t in req.tools
        ]
    choice = req.tool_choice
    if isinstance(choice, ToolChoiceFunction):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not None:
        chat["tool_choice"] = choice
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        schema: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema_ or {}}
        if fmt.description is not None:
            schema["description"] = fmt.description
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    return chat


# --- items as IIR keeps and lists them ------------------------------------------------------------


def item_id(kind: str) -> str:
    prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}.get(
        kind, "it"
    )
    return f"{prefix}_{random_hex(24)}"


def as_items(value: Any) -> list[Any]:
    """``input`` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return list(value) if isinstance(value, list) else []


def listed(item: Any) -> Any:
    """An input item as ``GET .../input_items`` lists it: with an id, a status, typed parts."""
    if not isinstance(item, dict):
        return item
    kind = _item_kind(item) or "message"
    out = {"id": item.get("id") or item_id(kind), **item, "type": kind}
    if kind == "message":
        content = item.get("content")
        assistant = item.get("role") == "assistant"
        if isinstance(content, str):
            part = (
                {"type": "output_text", "text": content, "annotations": [], "logprobs": []}
                if assistant
                else {"type": "input_text", "text": content}
            )
            out["content"] = [part]
        elif assistant and isinstance(content, list):
            out["content"] = [
                {"annotations": [], "logprobs": [], **p}
                if isinstance(p, dict) and p.get("type") == "output_text"
                else p
                for p in content
            ]
        out["status"] = item.get("status") or "completed"
    elif kind in ("function_call", "function_call_output"):
        out["status"] = item.get("status") or "completed"
    return out


def as_history(item: Any) -> Any | None:
    """A stored item as a later turn sends it: without IIR's ids and statuses (OpenAI does not
    know them), reasoning items left out (they belong to OpenAI's own store)."""
    if not isinstance(item, dict) or item.get("type") == "reasoning":
        return None
    return {k: v for k, v in item.items() if k not in ("id", "status")}
