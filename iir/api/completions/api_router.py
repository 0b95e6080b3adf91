"""``POST /v1/completions``: OpenAI's legacy completions, on the local engine, ``iir/echo`` and
OpenAI-compatible providers (each takes the prompt natively), streamed or not."""

from __future__ import annotations

from typing import TYPE_CHECKING

from iir.api.completions import serving
from iir.api.completions.protocol import CompletionRequest, TextCompletion, to_chat
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
from iir.core.types import COMPLETIONS

if TYPE_CHECKING:
    from iir.api.services import Services


async def completions(svc: Services, req: Request) -> Response | StreamResponse:
    prepared = await svc.pipeline.prepare(
        await req.json(), req.caller(), to_chat, surface=COMPLETIONS
    )
    chat = prepared.request
    req.state["model"] = chat.model
    req.reply_headers += prepared.headers
    decision = prepared.decision
    if chat.stream:
        stream = await while_connected(req, svc.pipeline.stream(prepared))
        headers = list(SSE_HEADERS)
        if decision is not None:
            headers += decision.headers(stream.model)
        return StreamResponse(serving.sse(stream, now(), chat.include_usage), headers=headers)
    answer = await while_connected(req, svc.pipeline.run(prepared))
    return json_response(
        serving.completion_body(answer, now()),
        headers=decision.headers(answer.model) if decision is not None else [],
    )


ROUTES = [
    Route(
        "POST",
        "/v1/completions",
        completions,
        "Legacy text completion (OpenAI-compatible), streamed or not",
        request=CompletionRequest,
        response=TextCompletion,
        stream=TextCompletion,
        tags=("completions",),
    ),
]
