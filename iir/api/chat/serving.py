"""Chat completions' wire shapes: the ``chat.completion`` body and the SSE stream of chunks,
built from the pipeline's scrubbed :class:`~iir.service.pipeline.Answer` and events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson

from iir.api.http import SSE_DONE, error_frame, sse_frame
from iir.core.errors import ApiError
from iir.core.ids import random_hex
from iir.core.protocol import ChatRequest
from iir.core.types import Completion, Delta, Usage
from iir.service.pipeline import Answer, AnswerStream


def completion_id() -> str:
    return "chatcmpl-" + random_hex(12)


def usage_body(usage: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
    out.update(usage.details)
    return out


def completion_body(answer: Answer, created: int) -> dict[str, Any]:
    completion: Completion = answer.completion
    choices = []
    for c in completion.choices:
        message: dict[str, Any] = {"role": "assistant", "content": c.content, "refusal": c.refusal}
        if c.tool_calls:
            message["tool_calls"] = c.tool_calls
        choices.append(
            {
                "index": c.index,
                "message": message,
                "logprobs": c.logprobs,
                "finish_reason": c.finish_reason,
            }
        )
    body: dict[str, Any] = {
        "id": completion_id(),
        "object": "chat.completion",
        "created": created,
        "model": answer.model,
        "choices": choices,
    }
    if completion.system_fingerprint:
        body["system_fingerprint"] = completion.system_fingerprint
    if completion.usage is not None:
        body["usage"] = usage_body(completion.usage)
    return body


def _chunk(cid: str, created: int, model: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }


def delta_choice(d: Delta) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if d.content is not None:
        delta["content"] = d.content
    if d.tool_calls:
        delta["tool_calls"] = d.tool_calls
    if d.refusal is not None:
        delta["refusal"] = d.refusal
    return {
        "index": d.index,
        "delta": delta,
        "logprobs": d.logprobs,
        "finish_reason": d.finish_reason,
    }


async def sse(chat: ChatRequest, answer: AnswerStream, created: int) -> AsyncIterator[bytes]:
    """The chunk stream: a first chunk per choice with the role, content chunks with
    ``finish_reason`` on each choice's last, the usage chunk when asked for, then ``[DONE]``."""
    cid, model = completion_id(), answer.model
    # Every content frame shares its head: serialized once, up to `"choices":`.
    head = b"data: " + orjson.dumps(_chunk(cid, created, model, []))[: -len(b"[]}")]
    yield sse_frame(
        _chunk(
            cid,
            created,
            model,
            [
                {
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
                for i in range(chat.n)
            ],
        )
    )
    usage: Usage | None = None
    async with aclosing(answer.events) as events:  # type: ignore[type-var]
        try:
            async for event in events:
                if isinstance(event, Delta):
                    yield head + orjson.dumps((delta_choice(event),)) + b"}\n\n"
                elif isinstance(event, Usage):
                    usage = event
        except ApiError as err:
            yield error_frame(err)
            yield SSE_DONE
            return
    if usage is not None and chat.include_usage:
        body = _chunk(cid, created, model, [])
        body["usage"] = usage_body(usage)
        yield sse_frame(body)
    yield SSE_DONE
