"""Legacy completions' answers: the ``text_completion`` object and its SSE stream of chunks
(the same shape), built from the pipeline's scrubbed answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from iir.api.chat.serving import usage_body
from iir.api.http import SSE_DONE, error_frame, sse_frame
from iir.core.errors import ApiError
from iir.core.ids import random_hex
from iir.core.types import Delta, Usage
from iir.service.pipeline import Answer, AnswerStream

_FINISH = ("stop", "length", "content_filter")


def _finish(reason: str | None) -> str | None:
    if reason is None:
        return None
    return reason if reason in _FINISH else "stop"


def _body(cid: str, created: int, model: str, choices: list[Any]) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }


def completion_body(answer: Answer, created: int) -> dict[str, Any]:
    completion = answer.completion
    choices = [
        {
            "text": c.content or "",
            "index": c.index,
            "logprobs": c.logprobs,
            "finish_reason": _finish(c.finish_reason),
        }
        for c in completion.choices
    ]
    body = _body("cmpl-" + random_hex(12), created, answer.model, choices)
    if completion.system_fingerprint:
        body["system_fingerprint"] = completion.system_fingerprint
    if completion.usage is not None:
        body["usage"] = usage_body(completion.usage)
    return body


async def sse(answer: AnswerStream, created: int, include_usage: bool) -> AsyncIterator[bytes]:
    """One chunk per piece, the usage chunk (``choices: []``) when asked for, then ``[DONE]``;
    a failure mid-stream sends the error object before ``[DONE]``."""
    cid, model = "cmpl-" + random_hex(12), answer.model
    usage: Usage | None = None
    async with aclosing(answer.events) as events:  # type: ignore[type-var]
        try:
            async for event in events:
                if isinstance(event, Usage):
                    usage = event
                elif isinstance(event, Delta):
                    choice = {
                        "text": event.content or "",
                        "index": event.index,
                        "logprobs": event.logprobs,
                        "finish_reason": _finish(event.finish_reason),
                    }
                    yield sse_frame(_body(cid, created, model, [choice]))
        except ApiError as err:
            yield error_frame(err)
            yield SSE_DONE
            return
    if usage is not None and include_usage:
        body = _body(cid, created, model, [])
        body["usage"] = usage_body(usage)
        yield sse_frame(body)
    yield SSE_DONE
