"""``POST /v1/embeddings``: OpenAI's embeddings, on ``iir/echo-embed``, local embedding models
(vLLM's pooling runner) and OpenAI or OpenAI-compatible providers.

The inputs are scrubbed and counted like prompts (``IIR_MAX_PROMPT_TOKENS`` and the per-key
token limit hold); ``auto`` picks an embedding model, this box's own first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iir.api.embeddings.protocol import EmbeddingList
from iir.api.embeddings.serving import embeddings_body
from iir.api.http import Request, Response, json_response, while_connected
from iir.api.router import Route
from iir.core.protocol import EmbeddingsRequest

if TYPE_CHECKING:
    from iir.api.services import Services


async def embeddings(svc: Services, req: Request) -> Response:
    prepared = await svc.pipeline.prepare_embeddings(await req.json(), req.caller())
    req.state["model"] = prepared.request.model
    req.reply_headers += prepared.headers
    answer = await while_connected(req, svc.pipeline.embed(prepared))
    return json_response(embeddings_body(answer, prepared.request.encoding_format))


ROUTES = [
    Route(
        "POST",
        "/v1/embeddings",
        embeddings,
        "Embeddings (OpenAI-compatible) of one or more texts or token arrays",
        request=EmbeddingsRequest,
        response=EmbeddingList,
        tags=("embeddings",),
    ),
]
