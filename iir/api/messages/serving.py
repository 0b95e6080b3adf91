"""The Messages API's answers: the ``message`` object and Anthropic's stream events, built from
the pipeline's scrubbed answer, translated or native.

A translated answer becomes content blocks (a ``text`` block, then one ``tool_use`` block per
tool call); its usage splits cached prompt tokens out of ``input_tokens`` as Anthropic does. A
native answer (Anthropic's own) is relayed as it is, under the model name IIR served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson

from iir.api.messages.protocol import error_object, native_only, to_chat
from iir.core.errors import ApiError
from iir.core.ids import random_hex
from iir.core.types import MESSAGES, Completion, Delta, NativeEvent, Usage
from iir.service.pipeline import Answer, AnswerStream, Caller, Pipeline, Prepared

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


async def prepare(
    pipeline: Pipeline,
    body: Any,
    caller: Caller,
    headers: dict[str, str] | None = None,
) -> Prepared:
    """A Messages body through the pipeline's steps."""
    only = native_only(body) if isinstance(body, dict) else None
    return await pipeline.prepare(
        body, caller, to_chat, surface=MESSAGES, headers=headers, native_only=only
    )


def message_id() -> str:
    return "msg_" + random_hex(16)


def usage_object(usage: Usage | None) -> dict[str, Any]:
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    cached = usage.details.get("prompt_tokens_details", {}).get("cached_tokens") or 0
    return {
        "input_tokens": max(0, usage.prompt_tokens - cached),
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def _tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def content_blocks(completion: Completion) -> tuple[list[dict[str, Any]], str]:
    """A translated answer's content blocks and stop reason."""
    choice = completion.choices[0] if completion.choices else None
    if choice is None:
        return [], "end_turn"
    blocks: list[dict[str, Any]] = []
    text = (choice.content or "") + (choice.refusal or "")
    if text or not choice.tool_calls:
        blocks.append({"type": "text", "text": text})
    for call in choice.tool_calls or ():
        fn = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id") or "toolu_" + random_hex(12),
                "name": fn.get("name") or "",
                "input": _tool_input(fn.get("arguments") or ""),
            }
        )
    return blocks, STOP_REASONS.get(choice.finish_reason, "end_turn")


def message_object(answer: Answer) -> dict[str, Any]:
    if answer.native is not None:
        return {**answer.native, "model": answer.model}
    blocks, stop = content_blocks(answer.completion)
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage_object(answer.completion.usage),
    }


# --- streams ----------------------------------------------------------------------------------------


def frame(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class _Blocks:
    """Content blocks of a translated stream: one text block, one block per tool call."""

    def __init__(self) -> None:
        self.count = 0
        self.text: int | None = None  # index of the open text block
        self.tools: dict[int, int] = {}  # tool call index → block index
        self.open: list[int] = []

    def _start(self, block: dict[str, Any]) -> tuple[int, bytes]:
        index = self.count
        self.count += 1
        self.open.append(index)
        return index, frame(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": block},
        )

    def stop(self, index: int) -> bytes:
        self.open.remove(index)
        return frame("content_block_stop", {"type": "content_block_stop", "index": index})

    def delta(self, d: Delta) -> list[bytes]:
        out = []
        text = (d.content or "") + (d.refusal or "")
        if text:
            if self.text is None:
                self.text, start = self._start({"type": "text", "text": ""})
                out.append(start)
            out.append(
                frame(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": self.text,
                        "delta": {"type": "text_delta", "text": text},
                    },
                )
            )
        for call in d.tool_calls or ():
            slot = int(call.get("index", 0))
            fn = call.get("function") or {}
            if slot not in self.tools:
                if self.text is not None and self.text in self.open:
                    out.append(self.stop(self.text))
                block: dict[str, Any] = {
                    "type": "tool_use",
                    "id": call.get("id") or "toolu_" + random_hex(12),
                    "name": fn.get("name") or "",
                    "input": {},
                }
                self.tools[slot], start = self._start(block)
                out.append(start)
            piece = fn.get("arguments")
            if piece:
                out.append(
                    frame(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": self.tools[slot],
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                    )
                )
        return out


async def sse(answer: AnswerStream, prompt_tokens: int) -> AsyncIterator[bytes]:
    """Anthropic's event stream: ``message_start``, ``ping``, content blocks, ``message_delta``,
    ``message_stop``; a failure after the stream began sends an ``error`` event."""
    blocks = _Blocks()
    started = native = False
    usage: Usage | None = None
    finish: str | None = None
    async with aclosing(answer.events) as events:  # type: ignore[type-var]
        try:
            async for event in events:
                if isinstance(event, Usage):
                    usage = event
                    continue
                if isinstance(event, NativeEvent):  # Anthropic's own events, relayed
                    native = True
                    data = event.data
                    if event.name == "message_start" and isinstance(data.get("message"), dict):
                        data = {**data, "message": {**data["message"], "model": answer.model}}
                    yield frame(event.name, data)
                    continue
                if not started:
                    started = True
                    yield _message_start(answer.model, prompt_tokens)
                    yield frame("ping", {"type": "ping"})
                for piece in blocks.delta(event):
                    yield piece
                if event.finish_reason:
                    finish = event.finish_reason
        except ApiError as err:
            yield frame("error", error_object(err))
            return
    if native:
        return
    if not started:
        yield _message_start(answer.model, prompt_tokens)
        yield frame("ping", {"type": "ping"})
    for index in list(blocks.open):
        yield blocks.stop(index)
    stop = STOP_REASONS.get(finish or "stop", "end_turn")
    yield frame(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": usage.completion_tokens if usage is not None else 0},
        },
    )
    yield frame("message_stop", {"type": "message_stop"})


def _message_start(model: str, prompt_tokens: int) -> bytes:
    return frame(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": message_id(),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": 0},
            },
        },
    )
