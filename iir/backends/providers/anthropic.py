"""``anthropic/<model>``: Claude through the Messages API, translated both ways.

Request: system and developer messages → ``system``; text and image parts (base64 data URLs and
plain URLs) → content blocks; assistant ``tool_calls`` → ``tool_use`` blocks; ``tool`` messages →
``tool_result`` blocks in a user turn; consecutive turns of one role are merged (the API wants
them alternating); ``tools``/``tool_choice``/``parallel_tool_calls`` → Anthropic's forms;
``max_tokens`` defaults to ``IIR_ANTHROPIC_MAX_TOKENS`` (the API requires it); ``stop`` →
``stop_sequences``; ``temperature`` is capped at 1 (Anthropic's range is 0 to 1).

Answer: text and ``tool_use`` blocks → content and ``tool_calls``; ``stop_reason`` →
``finish_reason``; usage with cache tokens counted into ``prompt_tokens``. Streams: every event
type (``message_start``, ``content_block_*`` with ``text_delta`` and ``input_json_delta``,
``message_delta``, ``message_stop``, ``ping``, ``error``) becomes OpenAI chunks.

``/v1/messages`` requests reach Claude natively: the client's (scrubbed) body with the
provider's model id, and the client's ``anthropic-version`` and ``anthropic-beta`` headers. Stream
events are marked for the answer scrubber: the text, JSON and thinking deltas of each content
block are one stream each, closed by ``content_block_stop``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import suppress
from datetime import datetime
from typing import Any, ClassVar

import orjson

from iir.backends.base import cannot_serve
from iir.backends.providers.base import ProviderBackend, as_object, bad_answer
from iir.core.errors import bad_request
from iir.core.protocol import ChatRequest, Message, ScrubbedBody, ScrubbedChat
from iir.core.types import (
    MESSAGES,
    Choice,
    Completion,
    Delta,
    ModelCard,
    NativeAnswer,
    NativeEvent,
    StreamEvent,
    Usage,
)

API_VERSION = "2023-06-01"

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_DATA_URL = re.compile(r"data:(?P<media>[\w.+-]+/[\w.+-]+);base64,(?P<data>.+)", re.DOTALL)


def finish_reason(stop_reason: Any) -> str:
    return STOP_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


# --- request ---------------------------------------------------------------------------------------


def _image_block(part: Any, where: str) -> dict[str, Any]:
    image = (part.model_extra or {}).get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise bad_request(f"Invalid value for '{where}.image_url': needs a 'url'", param=where)
    m = _DATA_URL.fullmatch(url)
    if m:
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": m["media"], "data": m["data"]},
        }
    if url.startswith("data:"):
        raise bad_request(
            f"Invalid value for '{where}.image_url.url': a data URL must be base64 "
            "('data:<media type>;base64,...')",
            param=where,
        )
    return {"type": "image", "source": {"type": "url", "url": url}}


def _content_blocks(msg: Message, where: str) -> list[dict[str, Any]]:
    if msg.content is None:
        return []
    if isinstance(msg.content, str):
        # the API refuses empty and whitespace-only text blocks
        return [{"type": "text", "text": msg.content}] if msg.content.strip() else []
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(msg.content):
        at = f"{where}.content[{j}]"
        if part.type in ("text", "refusal"):
            if part.text and part.text.strip():
                blocks.append({"type": "text", "text": part.text})
        elif part.type == "image_url":
            blocks.append(_image_block(part, at))
        else:
            raise bad_request(
                f"Invalid value for '{at}.type': '{part.type}' parts are not supported by "
                "anthropic models",
                param=at,
            )
    return blocks


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    try:
        args = orjson.loads(call.function.arguments) if call.function.arguments.strip() else {}
    except orjson.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise bad_request(
            f"Invalid value for '{where}.function.arguments': must be a JSON object",
            param=where,
        )
    return {"type": "tool_use", "id": call.id, "name": call.function.name, "input": args}


def _messages(request: ChatRequest) -> tuple[str | None, list[dict[str, Any]]]:
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(request.messages):
        where = f"messages[{i}]"
        if msg.role in ("system", "developer"):
            text = msg.text()
            if text:
                system.append(text)
            continue
        if msg.role == "tool":
            role = "user"
            blocks: list[dict[str, Any]] = [
                {
                    "type": "tool_result",
                    "tool_use_id": msg.tool_call_id,
                    "content": _content_blocks(msg, where) or "",
                }
            ]
        elif msg.role == "assistant":
            role = "assistant"
            blocks = _content_blocks(msg, where)
            for k, call in enumerate(msg.tool_calls or ()):
                blocks.append(_tool_use(call, f"{where}.tool_calls[{k}]"))
        else:
            role = "user"
            blocks = _content_blocks(msg, where)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise bad_request(
            "Invalid value for 'messages': anthropic models need at least one non-system "
            "message with content",
            param="messages",
        )
    return ("\n\n".join(system) or None), turns


def _tools(request: ChatRequest) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(request.tools or ()):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type") != "function" or not isinstance(fn, dict) or not fn.get("name"):
            raise bad_request(
                f"Invalid value for 'tools[{i}]': anthropic models take function tools "
                "({'type': 'function', 'function': {'name': ...}})",
                param=f"tools[{i}]",
            )
        item: dict[str, Any] = {
            "name": fn["name"],
            "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
        }
        if fn.get("description"):
            item["description"] = fn["description"]
        out.append(item)
    return out


def _tool_choice(request: ChatRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    else:
        fn = choice.get("function") if isinstance(choice, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad_request(
                "Invalid value for 'tool_choice': a named choice is "
                "{'type': 'function', 'function': {'name': ...}}",
                param="tool_choice",
            )
        out = {"type": "tool", "name": fn["name"]}
    if request.parallel_tool_calls is False and request.tools:
        out = out or {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out


def build_request(request: ChatRequest, model: str, stream: bool, default_max_tokens: int) -> bytes:
    if request.n != 1:
        raise bad_request("Invalid value for 'n': anthropic models return one choice", param="n")
    system, turns = _messages(request)
    body: dict[str, Any] = {
        "model": model,
        "messages": turns,
        "max_tokens": request.output_limit or default_max_tokens,
    }
    if system:
        body["system"] = system
    if request.stop_list:
        body["stop_sequences"] = request.stop_list
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, 1.0)
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.tools:
        body["tools"] = _tools(request)
    choice = _tool_choice(request)
    if choice is not None and request.tools:
        body["tool_choice"] = choice
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


# --- answer ----------------------------------------------------------------------------------------


def usage(raw: Any, output_tokens: int | None = None) -> Usage:
    raw = raw if isinstance(raw, dict) else {}

    def n(key: str) -> int:
        v = raw.get(key)
        return v if isinstance(v, int) else 0

    cached = n("cache_read_input_tokens")
    prompt = n("input_tokens") + n("cache_creation_input_tokens") + cached
    out = output_tokens if output_tokens is not None else n("output_tokens")
    return Usage(prompt, out, {"prompt_tokens_details": {"cached_tokens": cached}})


def parse_message(body: Any) -> Completion:
    if not isinstance(body, dict) or not isinstance(body.get("content"), list):
        raise bad_answer("anthropic", "the answer has no 'content' list")
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in body["content"]:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name", "")),
                        "arguments": orjson.dumps(block.get("input", {})).decode(),
                    },
                }
            )
    choice = Choice(
        index=0,
        content="".join(text) if text or not calls else None,
        finish_reason=finish_reason(body.get("stop_reason")),
        tool_calls=calls or None,
    )
    return Completion([choice], usage(body.get("usage")))


class StreamTranslator:
    """Anthropic's stream events → OpenAI deltas; one per streamed answer."""

    def __init__(self) -> None:
        self.tool_index: dict[int, int] = {}  # content block index → OpenAI tool_calls index
        self.start_usage: dict[str, Any] = {}
        self.output_tokens: int | None = None
        self.done = False

    def feed(self, event: str, data: bytes) -> list[StreamEvent]:
        try:
            ev = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise bad_answer("anthropic", "a stream event is not valid JSON") from None
        if not isinstance(ev, dict):
            raise bad_answer("anthropic", "a stream event is not a JSON object")
        kind = ev.get("type", event)
        if kind == "message_start":
            msg = as_object(ev.get("message"))
            self.start_usage = as_object(msg.get("usage"))
            return []
        if kind == "content_block_start":
            block = as_object(ev.get("content_block"))
            if block.get("type") == "tool_use":
                k = len(self.tool_index)
                self.tool_index[ev.get("index", -1)] = k
                call = {
                    "index": k,
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {"name": str(block.get("name", "")), "arguments": ""},
                }
                return [Delta(tool_calls=[call])]
            if block.get("type") == "text" and block.get("text"):
                return [Delta(content=block["text"])]
            return []
        if kind == "content_block_delta":
            delta = as_object(ev.get("delta"))
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                return [Delta(content=delta["text"])] if delta["text"] else []
            if delta.get("type") == "input_json_delta":
                slot = self.tool_index.get(ev.get("index", -1))
                partial = delta.get("partial_json")
                if slot is None or not isinstance(partial, str) or not partial:
                    return []
                return [Delta(tool_calls=[{"index": slot, "function": {"arguments": partial}}])]
            return []  # thinking, signature and citation deltas have no OpenAI counterpart
        if kind == "message_delta":
            delta = as_object(ev.get("delta"))
            u = as_object(ev.get("usage"))
            if isinstance(u.get("output_tokens"), int):
                self.output_tokens = u["output_tokens"]
            if delta.get("stop_reason"):
                return [Delta(finish_reason=finish_reason(delta["stop_reason"]))]
            return []
        if kind == "message_stop":
            self.done = True
            return [usage(self.start_usage, self.output_tokens)]
        if kind == "error":
            err = as_object(ev.get("error"))
            raise bad_answer(
                "anthropic",
                f"{err.get('type', 'error')} during the stream: {err.get('message', '')}",
            )
        return []  # ping, content_block_stop and event types added later


# The text a content block delta carries, by delta type: (field, the block's stream).
_DELTA_TEXT = {
    "text_delta": ("text", "text"),
    "input_json_delta": ("partial_json", "json"),
    "thinking_delta": ("thinking", "thinking"),
}
#: Client headers a native Messages request passes on.
PASSED_HEADERS = ("anthropic-version", "anthropic-beta")


def mark(name: str, data: dict[str, Any]) -> NativeEvent:
    """A Messages stream event, marked for the answer scrubber."""
    index = data.get("index", 0)
    if name == "content_block_delta":
        delta = as_object(data.get("delta"))
        found = _DELTA_TEXT.get(str(delta.get("type")))
        if found is not None:
            return NativeEvent(name, data, (index, found[1]), ("delta", found[0]))
    if name == "content_block_stop":
        return NativeEvent(name, data, closes=tuple((index, k) for _, k in _DELTA_TEXT.values()))
    return NativeEvent(name, data)


class AnthropicBackend(ProviderBackend):
    name = "anthropic"
    key_vars = ("ANTHROPIC_API_KEY",)
    base_var = "IIR_ANTHROPIC_BASE_URL"
    default_base_url = "https://api.anthropic.com/v1"
    catalogue = (
        "claude-sonnet-4-5",
        "claude-opus-4-1",
        "claude-haiku-4-5",
        "claude-3-5-haiku-latest",
    )
    models_path: ClassVar[str | None] = "/models?limit=1000"
    messages_path = "/messages"

    def auth_headers(self) -> dict[str, str]:
        return {"x-api-key": self.key, "anthropic-version": API_VERSION}

    def parse_models(self, body: Any) -> list[ModelCard]:
        cards = super().parse_models(body)
        dates = {
            item.get("id"): item.get("created_at")
            for item in body.get("data", ())
            if isinstance(item, dict)
        }
        for card in cards:
            stamp = dates.get(card.id[len(self.prefix) :])
            if isinstance(stamp, str):
                with suppress(ValueError):
                    card.created = int(datetime.fromisoformat(stamp).timestamp())
        return cards

    async def complete(self, request: ScrubbedChat, model: str) -> Completion:
        body = build_request(request, model, False, self.settings.anthropic_max_tokens)
        return parse_message(await self._up().post_json(self.messages_path, body))

    def speaks(self, surface: str, model: str) -> bool:
        return surface == MESSAGES

    def _native(
        self, request: ScrubbedBody, model: str, stream: bool
    ) -> tuple[bytes, dict[str, str]]:
        if request.surface != MESSAGES:
            raise cannot_serve(self.name, request.surface)
        body = {**request.body, "model": model}
        body.pop("stream", None)
        if stream:
            body["stream"] = True
        headers = {k: v for k, v in request.headers if k in PASSED_HEADERS}
        return orjson.dumps(body), headers

    async def complete_native(self, request: ScrubbedBody, model: str) -> NativeAnswer:
        body, headers = self._native(request, model, False)
        answer = await self._up().post_json(self.messages_path, body, headers)
        if not isinstance(answer, dict) or not isinstance(answer.get("content"), list):
            raise bad_answer("anthropic", "the answer has no 'content' list")
        return NativeAnswer(answer, usage(answer.get("usage")))

    def stream_native(
        self, request: ScrubbedBody, model: str
    ) -> AsyncIterator[StreamEvent | NativeEvent]:
        body, headers = self._native(request, model, True)
        return self._native_stream(body, headers)

    async def _native_stream(
        self, body: bytes, headers: dict[str, str]
    ) -> AsyncIterator[StreamEvent | NativeEvent]:
        events = self._up().post_sse(self.messages_path, body, headers)
        start: dict[str, Any] = {}
        output: int | None = None
        done = False
        try:
            async for event, raw in events:
                if done:
                    continue  # drain to the end so the connection can be reused
                try:
                    data = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise bad_answer("anthropic", "a stream event is not valid JSON") from None
                if not isinstance(data, dict):
                    raise bad_answer("anthropic", "a stream event is not a JSON object")
                name = data.get("type") if isinstance(data.get("type"), str) else event
                if name == "error":
                    err = as_object(data.get("error"))
                    raise bad_answer(
                        "anthropic",
                        f"{err.get('type', 'error')} during the stream: {err.get('message', '')}",
                    )
                if name == "message_start":
                    start = as_object(as_object(data.get("message")).get("usage"))
                elif name == "message_delta":
                    n = as_object(data.get("usage")).get("output_tokens")
                    output = n if isinstance(n, int) else output
                elif name == "message_stop":
                    done = True
                yield mark(str(name), data)
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        if not done:
            raise bad_answer("anthropic", "the stream ended before message_stop")
        yield usage(start, output)

    async def stream(self, request: ScrubbedChat, model: str) -> AsyncIterator[StreamEvent]:
        body = build_request(request, model, True, self.settings.anthropic_max_tokens)
        events = self._up().post_sse(self.messages_path, body)
        tr = StreamTranslator()
        try:
            async for event, data in events:
                if tr.done:
                    continue  # drain to the end so the connection can be reused
                for out in tr.feed(event, data):
                    yield out
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        if not tr.done:
            raise bad_answer("anthropic", "the stream ended before message_stop")
