"""``POST /v1/chat/completions``: OpenAI's chat completions, streamed (SSE) or not."""

from __future__ import annotations

from typing import TYPE_CHECKING

from iir.api.chat import serving
from iir.api.chat.protocol import ChatCompletion, ChatCompletionChunk
from iir.api.http import (
    SSE_HEADERS,
    Request,
    Response,
    StreamResponse,
    json_response,
    while_connected,
)
from iir.api.router import Route
from iir.core.ids import now
from iir.core.protocol import ChatRequest
from iir.ops import metrics, overhead

if TYPE_CHECKING:
    from iir.api.services import Services


async def chat_completions(svc: Services, req: Request) -> Response | StreamResponse:
    meter = overhead.start()
    prepared = await svc.pipeline.prepare(await req.json(), req.caller())
    chat = prepared.request
    req.state["model"] = chat.model
    req.reply_headers += prepared.headers
    decision = prepared.decision
    resp: Response | StreamResponse
    if chat.stream:
        stream = await while_connected(req, svc.pipeline.stream(prepared))
        headers = list(SSE_HEADERS)
        if decision is not None:
            headers += decision.headers(stream.model)
        resp = StreamResponse(serving.sse(chat, stream, now()), headers=headers)
    else:
        answer = await while_connected(req, svc.pipeline.run(prepared))
        resp = json_response(
            serving.completion_body(answer, now()),
            headers=decision.headers(answer.model) if decision is not None else [],
        )
    spent = meter.overhead()
    metrics.OVERHEAD.observe(spent)
    resp.headers.append(("x-iir-overhead-ms", f"{spent * 1000:.3f}"))
    return resp


ROUTES = [
    Route(
        "POST",
        "/v1/chat/completions",
        chat_completions,
        "Chat completion (OpenAI-compatible), streamed or not",
        request=ChatRequest,
        response=ChatCompletion,
        stream=ChatCompletionChunk,
        tags=("chat",),
    ),
]
