"""The Responses API's answers: the ``response`` object and its typed stream events, built from
the pipeline's scrubbed answer, translated or native.

A translated answer (a chat backend's choice) becomes ``output`` items: one ``message`` with an
``output_text`` part (and a ``refusal`` part when the model refused), then one ``function_call``
item per tool call. A native answer (OpenAI's own) is relayed as it is, with IIR's response id,
the model name the client asked for and IIR's view of ``store``/``background``/
``previous_response_id``; its events get IIR's ``sequence_number`` s.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import orjson

from iir.api.responses.protocol import item_id, native_only, to_chat
from iir.core.errors import ApiError
from iir.core.ids import now, random_hex
from iir.core.types import RESPONSES, Completion, Delta, NativeEvent, Usage
from iir.service.pipeline import Answer, AnswerStream, Caller, Pipeline, Prepared

log = logging.getLogger("iir.api.responses")

TERMINAL = ("response.completed", "response.incomplete", "response.failed")
_NOT_NULL = ("usage", "user")
#: ``response.error.code`` for an ApiError status (the schema's codes are few).
_ERROR_CODES = {429: "rate_limit_exceeded", 400: "invalid_prompt"}


async def prepare(pipeline: Pipeline, body: Any, caller: Caller, admit: bool = True) -> Prepared:
    """A Responses body (earlier turns already in ``input``) through the pipeline's steps."""
    only = native_only(body) if isinstance(body, dict) else None
    return await pipeline.prepare(
        body, caller, to_chat, admit=admit, surface=RESPONSES, native_only=only
    )


@dataclass(slots=True)
class Turn:
    """One response being made: what its object says besides the output."""

    id: str
    created_at: int
    model: str
    #: The scrubbed request body (its fields are echoed in the response object).
    body: dict[str, Any]
    previous_response_id: str | None = None
    background: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def usage_object(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    cached = usage.details.get("prompt_tokens_details", {}).get("cached_tokens") or 0
    reasoning = usage.details.get("completion_tokens_details", {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def error_object(err: ApiError) -> dict[str, Any]:
    return {"code": _ERROR_CODES.get(err.status, "server_error"), "message": err.message}


def _tools(body: dict[str, Any]) -> list[Any]:
    out = []
    for tool in body.get("tools") or ():
        if isinstance(tool, dict) and tool.get("type") == "function":
            out.append({"description": None, "parameters": None, "strict": None, **tool})
        else:
            out.append(tool)
    return out


def response_object(
    turn: Turn,
    status: str,
    output: list[Any],
    usage: dict[str, Any] | None = None,
    *,
    error: dict[str, Any] | None = None,
    incomplete: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body = turn.body
    # Fields OpenAI's schema allows to be absent but not null.
    optional: dict[str, Any] = {k: body[k] for k in ("user",) if isinstance(body.get(k), str)}
    if usage is not None:
        optional["usage"] = usage
    return {
        "id": turn.id,
        "object": "response",
        "created_at": turn.created_at,
        "status": status,
        "completed_at": now() if status == "completed" else None,
        "background": turn.background,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": turn.model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": turn.previous_response_id,
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": _tools(body),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation") or "disabled",
        "metadata": body.get("metadata") or {},
        **optional,
        **turn.extra,
    }


def _status(finish: str | None) -> tuple[str, dict[str, Any] | None]:
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    fn = call.get("function") or {}
    return {
        "id": item_id("function_call"),
        "type": "function_call",
        "status": status,
        "call_id": call.get("id") or "call_" + random_hex(12),
        "name": fn.get("name") or "",
        "arguments": fn.get("arguments") or "",
    }


def output_items(completion: Completion) -> tuple[list[Any], str, dict[str, Any] | None]:
    """A translated answer's ``output``, status and ``incomplete_details``."""
    choice = completion.choices[0] if completion.choices else None
    if choice is None:
        return [], "completed", None
    status, incomplete = _status(choice.finish_reason)
    items: list[Any] = []
    content: list[Any] = []
    if choice.content or not (choice.tool_calls or choice.refusal):
        content.append(_text_part(choice.content or ""))
    if choice.refusal:
        content.append({"type": "refusal", "refusal": choice.refusal})
    if content:
        items.append(
            {
                "id": item_id("message"),
                "type": "message",
                "role": "assistant",
                "status": "incomplete" if status == "incomplete" else "completed",
                "content": content,
            }
        )
    items += [_call_item(call) for call in choice.tool_calls or ()]
    return items, status, incomplete


def native_object(turn: Turn, native: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's own response object, as IIR answers it (without the nulls OpenAI's published
    schema does not allow, which its streams carry in early events)."""
    return {
        **{k: v for k, v in native.items() if v is not None or k not in _NOT_NULL},
        "id": turn.id,
        "model": turn.model,
        "previous_response_id": turn.previous_response_id,
        "store": turn.body.get("store", True),
        "background": turn.background,
        **turn.extra,
    }


def answer_object(turn: Turn, answer: Answer) -> dict[str, Any]:
    """The whole ``response`` object of a finished answer."""
    if answer.native is not None:
        return native_object(turn, answer.native)
    items, status, incomplete = output_items(answer.completion)
    return response_object(
        turn, status, items, usage_object(answer.completion.usage), incomplete=incomplete
    )


# --- streams ----------------------------------------------------------------------------------------


def frame(event: dict[str, Any]) -> bytes:
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class _Events:
    """Builds the typed events of a translated stream, numbering them."""

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.seq = 0
        self.output: list[Any] = []
        self.message: dict[str, Any] | None = None  # the open message item
        self.message_index = 0
        self.calls: dict[int, tuple[int, dict[str, Any]]] = {}  # tool index → (output index, item)
        self.open_calls: list[int] = []
        self.refused = ""  # refusal text, sent as one part when the answer ends

    def event(self, kind: str, **fields: Any) -> bytes:
        out = frame({"type": kind, "sequence_number": self.seq, **fields})
        self.seq += 1
        return out

    def text(self, piece: str) -> list[bytes]:
        out = []
        if self.message is None:
            out += self._close_calls()
            self.message = {
                "id": item_id("message"),
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            self.message_index = len(self.output)
            self.output.append(self.message)
            out.append(
                self.event(
                    "response.output_item.added",
                    output_index=self.message_index,
                    item={**self.message, "content": []},
                )
            )
            self.message["content"].append(_text_part(""))
            out.append(
                self.event(
                    "response.content_part.added",
                    item_id=self.message["id"],
                    output_index=self.message_index,
                    content_index=0,
                    part=_text_part(""),
                )
            )
        if piece:
            self.message["content"][0]["text"] += piece
            out.append(
                self.event(
                    "response.output_text.delta",
                    item_id=self.message["id"],
                    output_index=self.message_index,
                    content_index=0,
                    delta=piece,
                    logprobs=[],
                )
            )
        return out

    def refusal(self, text: str) -> list[bytes]:
        out = self.text("") if self.message is None else []
        assert self.message is not None
        part = {"type": "refusal", "refusal": ""}
        index = len(self.message["content"])
        self.message["content"].append(part)
        common = {"item_id": self.message["id"], "output_index": self.message_index}
        out.append(
            self.event("response.content_part.added", content_index=index, part=part, **common)
        )
        part["refusal"] = text
        out.append(self.event("response.refusal.delta", content_index=index, delta=text, **common))
        out.append(self.event("response.refusal.done", content_index=index, refusal=text, **common))
        out.append(
            self.event("response.content_part.done", content_index=index, part=dict(part), **common)
        )
        return out

    def tool_call(self, call: dict[str, Any]) -> list[bytes]:
        out = []
        index = int(call.get("index", 0))
        fn = call.get("function") or {}
        if index not in self.calls:
            out += self._close_message()
            item = _call_item({"id": call.get("id"), "function": {"name": fn.get("name")}})
            item["status"] = "in_progress"
            position = len(self.output)
            self.output.append(item)
            self.calls[index] = (position, item)
            self.open_calls.append(index)
            out.append(
                self.event("response.output_item.added", output_index=position, item=dict(item))
            )
        position, item = self.calls[index]
        if fn.get("name") and not item["name"]:
            item["name"] = fn["name"]
        piece = fn.get("arguments")
        if piece:
            item["arguments"] += piece
            out.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=position,
                    delta=piece,
                )
            )
        return out

    def _close_message(self, status: str = "completed") -> list[bytes]:
        message, self.message = self.message, None
        if message is None:
            return []
        common = {"item_id": message["id"], "output_index": self.message_index}
        part = message["content"][0]
        message["status"] = status
        return [
            self.event(
                "response.output_text.done",
                content_index=0,
                text=part["text"],
                logprobs=[],
                **common,
            ),
            self.event("response.content_part.done", content_index=0, part=part, **common),
            self.event("response.output_item.done", output_index=self.message_index, item=message),
        ]

    def _close_calls(self, status: str = "completed") -> list[bytes]:
        out = []
        for index in self.open_calls:
            position, item = self.calls[index]
            item["status"] = status
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=position,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
            out.append(self.event("response.output_item.done", output_index=position, item=item))
        self.open_calls = []
        return out

    def close(self, status: str = "completed") -> list[bytes]:
        item_status = "incomplete" if status == "incomplete" else "completed"
        out = self.refusal(self.refused) if self.refused else []
        return out + self._close_message(item_status) + self._close_calls(item_status)


async def sse(
    turn: Turn,
    answer: AnswerStream,
    on_final: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
) -> AsyncIterator[bytes]:
    """The typed event stream of a response; ``on_final`` gets the final object (to store it)
    before the terminal event is sent, so a client that continues at once finds it."""
    ev = _Events(turn)
    base = response_object(turn, "in_progress", [])
    native = False
    final: dict[str, Any] | None = None
    usage: Usage | None = None
    finish: str | None = None
    async with aclosing(answer.events) as events:  # type: ignore[type-var]
        try:
            async for event in events:
                if isinstance(event, Usage):
                    usage = event
                elif isinstance(event, NativeEvent):
                    native = True
                    data = {**event.data, "sequence_number": ev.seq}
                    ev.seq += 1
                    inner = data.get("response")
                    if isinstance(inner, dict):
                        data["response"] = native_object(turn, inner)
                        base = data["response"]
                        if event.name in TERMINAL:
                            final = data["response"]
                            await _keep(on_final, final)
                    yield frame({"type": event.name, **data})
                else:
                    if ev.seq == 0:
                        yield ev.event("response.created", response=base)
                        yield ev.event("response.in_progress", response=base)
                    for piece in _delta(ev, event):
                        yield piece
                    if event.finish_reason:
                        finish = event.finish_reason
        except ApiError as err:
            failed = {**base, "status": "failed", "error": error_object(err)}
            if not native:
                failed["output"] = ev.output
            yield ev.event("error", code=err.code, message=err.message, param=err.param)
            await _keep(on_final, failed)
            yield ev.event("response.failed", response=failed)
            return
    if native:
        return
    if ev.seq == 0:
        yield ev.event("response.created", response=base)
        yield ev.event("response.in_progress", response=base)
    status, incomplete = _status(finish)
    for piece in ev.close(status):
        yield piece
    final = response_object(turn, status, ev.output, usage_object(usage), incomplete=incomplete)
    await _keep(on_final, final)
    yield ev.event(
        "response.completed" if status == "completed" else "response.incomplete", response=final
    )


async def _keep(
    on_final: Callable[[dict[str, Any]], Awaitable[None]] | None, obj: dict[str, Any]
) -> None:
    """Stores the final object; a store that fails now costs the stored copy, not the answer
    the client is being sent (it gets 404 when it asks for it later)."""
    if on_final is None:
        return
    try:
        await on_final(obj)
    except ApiError as err:
        log.warning(
            "response not stored", extra={"event": "response_not_stored", "reason": err.message}
        )


def _delta(ev: _Events, d: Delta) -> list[bytes]:
    out: list[bytes] = []
    if d.index != 0:
        return out  # the Responses API has one output per response (n is 1)
    if d.content:
        out += ev.text(d.content)
    for call in d.tool_calls or ():
        out += ev.tool_call(call)
    if d.refusal:
        ev.refused += d.refusal
    return out
