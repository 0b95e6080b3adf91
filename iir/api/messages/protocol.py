"""Anthropic Messages API wire types: the request (validated and translated into the canonical
chat request), the ``message`` answer, and Anthropic's error shape.

What only Anthropic itself honours (server tools such as ``web_search_20250305``, ``document``
and ``search_result`` blocks, images by file id, more than four stop sequences, MCP servers) is
passed on to ``anthropic/`` models, which take the request natively, and refused with a 400
naming the field for every other model (:func:`native_only`). ``thinking`` and ``top_k`` are
accepted everywhere and honoured natively. The request models (and so ``/openapi.json``) say what
every model accepts: those extras are not in them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from iir.core.errors import ApiError
from iir.core.protocol import TokenCount, Whole, as_validated, validation_error

# --- the request ---------------------------------------------------------------------------------


class _Part(BaseModel):
    """Strict types; fields IIR does not read (``cache_control``) are kept and passed on."""

    model_config = ConfigDict(extra="allow", strict=True)


class TextBlock(_Part):
    type: Literal["text"]
    text: str


class ImageSource(_Part):
    """An image's bytes or URL. (Images by file id, ``"type": "file"``, are Anthropic's own:
    they go to ``anthropic/`` models only, and are not in this schema.)"""

    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(_Part):
    type: Literal["image"]
    source: ImageSource


Id = Annotated[str, Field(min_length=1)]


class ToolUseBlock(_Part):
    type: Literal["tool_use"]
    id: Id
    name: str
    input: dict[str, Any]


class ToolResultBlock(_Part):
    type: Literal["tool_result"]
    tool_use_id: Id
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] | None = (
        None
    )
    is_error: bool | None = None


class ThinkingBlock(_Part):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Part):
    type: Literal["redacted_thinking"]
    data: str


Block = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]
BLOCK_TYPES = ("text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking")


class MessageParam(_Part):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class Tool(_Part):
    """A client tool (a server tool has a dated ``type`` and goes to Anthropic only)."""

    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class ToolChoiceMode(_Part):
    type: Literal["auto", "any", "none"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(_Part):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


ToolChoice = Annotated[ToolChoiceMode | ToolChoiceTool, Field(discriminator="type")]


class Metadata(_Part):
    user_id: str | None = None


class CountTokensRequest(BaseModel):
    """``POST /v1/messages/count_tokens``. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[MessageParam], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``."""

    max_tokens: TokenCount
    stop_sequences: Annotated[list[str], Field(max_length=4)] | None = Field(
        None, description="Up to four for every model (anthropic/ models also take more)"
    )
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0, le=2**31 - 1), Whole] | None = None
    metadata: Metadata | None = None
    stream: bool = False
    service_tier: str | None = None


def native_only(body: dict[str, Any]) -> tuple[str, str] | None:
    """The first field of ``body`` only a model that takes the Messages API natively honours,
    as ``(param, what)``; None when every model can serve the request."""
    if body.get("mcp_servers"):
        return "mcp_servers", "MCP servers"
    stops = body.get("stop_sequences")
    if isinstance(stops, list) and len(stops) > 4:
        return "stop_sequences", "more than 4 stop sequences"
    tools = body.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind not in (None, "custom"):
                return f"tools[{i}].type", f"the server tool '{kind}'"
    messages = body.get("messages")
    for i, msg in enumerate(messages if isinstance(messages, list) else ()):
        content = msg.get("content") if isinstance(msg, dict) else None
        for j, block in enumerate(content if isinstance(content, list) else ()):
            found = _native_block(block, f"messages[{i}].content[{j}]")
            if found is not None:
                return found
    return None


def _native_block(block: Any, where: str) -> tuple[str, str] | None:
    if not isinstance(block, dict):
        return None
    kind = block.get("type")
    if kind not in BLOCK_TYPES:
        return f"{where}.type", f"'{kind}' blocks"
    source = block.get("source")
    if kind == "image" and isinstance(source, dict) and source.get("type") == "file":
        return f"{where}.source.type", "images by file id"
    if kind == "tool_result" and isinstance(block.get("content"), list):
        for k, inner in enumerate(block["content"]):
            found = _native_block(inner, f"{where}.content[{k}]")
            if found is not None:
                return found
    return None


# --- translation into the canonical chat request --------------------------------------------------


def _translatable(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` without what only Anthropic honours (:func:`native_only` keeps such requests from
    every other backend, with a 400 naming the field)."""
    out = dict(body)
    if isinstance(body.get("tools"), list):
        out["tools"] = [
            t for t in body["tools"] if isinstance(t, dict) and t.get("type") in (None, "custom")
        ]
    stops = body.get("stop_sequences")
    if isinstance(stops, list) and len(stops) > 4:
        out["stop_sequences"] = stops[:4]
    if isinstance(body.get("messages"), list):
        out["messages"] = [_translatable_message(m) for m in body["messages"]]
    return out


def _translatable_message(msg: Any) -> Any:
    if not isinstance(msg, dict) or not isinstance(msg.get("content"), list):
        return msg
    return {**msg, "content": [b for b in msg["content"] if _native_block(b, "") is None]}


def _image(block: ImageBlock) -> dict[str, Any]:
    src = block.source
    if src.type == "base64":
        url = f"data:{src.media_type or 'application/octet-stream'};base64,{src.data or ''}"
    else:
        url = src.url or ""
    return {"type": "image_url", "image_url": {"url": url}}


def _parts(blocks: list[Any]) -> list[dict[str, Any]]:
    out = []
    for b in blocks:
        if isinstance(b, TextBlock):
            out.append({"type": "text", "text": b.text})
        elif isinstance(b, ImageBlock):
            out.append(_image(b))
    return out


def _result_text(block: ToolResultBlock) -> str | list[dict[str, Any]]:
    content = block.content
    if content is None:
        text: str | list[dict[str, Any]] = ""
    elif isinstance(content, str):
        text = content
    else:
        parts = _parts(content)
        text = (
            "".join(p["text"] for p in parts) if all(p["type"] == "text" for p in parts) else parts
        )
    if block.is_error and isinstance(text, str):
        text = f"Error: {text}"
    return text


def _add(messages: list[dict[str, Any]], msg: MessageParam) -> None:
    content = msg.content
    if isinstance(content, str):
        messages.append({"role": msg.role, "content": content})
        return
    if msg.role == "assistant":
        text = "".join(b.text for b in content if isinstance(b, TextBlock))
        calls = [
            {
                "id": b.id,
                "type": "function",
                "function": {"name": b.name, "arguments": orjson.dumps(b.input).decode()},
            }
            for b in content
            if isinstance(b, ToolUseBlock)
        ]
        out: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
        if calls:
            out["tool_calls"] = calls
        messages.append(out)
        return
    # A user turn: tool results first (they answer the assistant's calls), then the rest.
    for b in content:
        if isinstance(b, ToolResultBlock):
            messages.append(
                {"role": "tool", "tool_call_id": b.tool_use_id, "content": _result_text(b)}
            )
    parts = _parts(content)
    if parts or not any(isinstance(b, ToolResultBlock) for b in content):
        messages.append({"role": "user", "content": parts})


def to_chat(body: dict[str, Any], *, counting: bool = False) -> dict[str, Any]:
    """The canonical chat body a (scrubbed) Messages body stands for (400 naming the field).
    ``counting``: a ``count_tokens`` body (no ``max_tokens``)."""
    model = CountTokensRequest if counting else MessagesRequest
    try:
        req = model.model_validate(_translatable(body))
    except ValidationError as exc:
        raise validation_error(exc) from None
    as_validated(body, req)
    messages: list[dict[str, Any]] = []
    if req.system:
        system = (
            req.system if isinstance(req.system, str) else "\n".join(b.text for b in req.system)
        )
        messages.append({"role": "system", "content": system})
    for msg in req.messages:
        _add(messages, msg)
    chat: dict[str, Any] = {"model": req.model, "messages": messages}
    if isinstance(req, MessagesRequest):
        chat["max_tokens"] = req.max_tokens
        chat["stream"] = req.stream
        if req.stop_sequences:
            chat["stop"] = req.stop_sequences
        for name in ("temperature", "top_p"):
            if getattr(req, name) is not None:
                chat[name] = getattr(req, name)
        if req.metadata is not None and req.metadata.user_id:
            chat["user"] = req.metadata.user_id
    if req.tools:
        chat["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "parameters": t.input_schema,
                    **({"description": t.description} if t.description else {}),
                },
            }
            for t in req.tools
        ]
    choice = req.tool_choice
    if choice is not None:
        if isinstance(choice, ToolChoiceTool):
            chat["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if choice.disable_parallel_tool_use:
            chat["parallel_tool_calls"] = False
    return chat


def count_body(body: dict[str, Any]) -> dict[str, Any]:
    return to_chat(body, counting=True)


# --- errors ----------------------------------------------------------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_object(err: ApiError) -> dict[str, Any]:
    """Anthropic's error shape."""
    kind = _ERROR_TYPES.get(
        err.status, "invalid_request_error" if err.status < 500 else "api_error"
    )
    return {"type": "error", "error": {"type": kind, "message": err.message}}


def error_body(err: ApiError) -> bytes:
    return orjson.dumps(error_object(err))
