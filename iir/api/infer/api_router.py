"""``POST /infer``: direct inference on a named model, for callers that are not OpenAI clients.

The body is translated into a chat request and runs through the same pipeline as
``/v1/chat/completions`` (scrubbing, limits, routing, fallbacks); with ``"async_": true`` it
becomes a job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iir.api.http import Request, Response, json_response, while_connected
from iir.api.infer.protocol import InferRequest, InferResponse, to_chat
from iir.api.jobs.protocol import JobStatus
from iir.api.router import Route
from iir.core.ids import random_hex
from iir.service.pipeline import Answer

if TYPE_CHECKING:
    from iir.api.services import Services


def infer_body(answer: Answer) -> dict[str, Any]:
    """The ``/infer`` answer: the first choice's text, and the usage."""
    completion = answer.completion
    choice = completion.choices[0] if completion.choices else None
    out: dict[str, Any] = {
        "id": "infer-" + random_hex(12),
        "model": answer.model,
        "output": {
            "text": (choice.content if choice else None) or "",
            "finish_reason": choice.finish_reason if choice else None,
        },
    }
    if completion.usage is not None:
        u = completion.usage
        out["usage"] = {
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
        }
    return out


async def infer(svc: Services, req: Request) -> Response:
    body = await req.json()
    prepared = await svc.pipeline.prepare(body, req.caller(), to_chat)
    req.state["model"] = prepared.request.model
    req.reply_headers += prepared.headers
    if body.get("async_") is True:
        return await svc.jobs.submit(req, "infer", prepared)
    return json_response(infer_body(await while_connected(req, svc.pipeline.run(prepared))))


ROUTES = [
    Route(
        "POST",
        "/infer",
        infer,
        "Direct inference on a named model (optionally as a job)",
        request=InferRequest,
        response=InferResponse,
        more=((202, JobStatus),),
        tags=("infer",),
    ),
]
