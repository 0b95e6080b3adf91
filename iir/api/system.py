"""The routes around the models: health, version, metrics, the API document and its page, and
the list of models."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, Field

from iir import __version__
from iir.api import openapi
from iir.api.http import Request, Response, json_response
from iir.api.router import Route
from iir.core.errors import ApiError

if TYPE_CHECKING:
    from iir.api.services import Services


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    reasons: list[str] | None = None


class Version(BaseModel):
    version: str


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    capabilities: list[str] = Field(
        description="The routes the model serves: chat, responses, messages, completions, "
        "embeddings (an extra field OpenAI's clients ignore)"
    )
    boxes: list[str] | None = Field(
        None, description="The fleet's other boxes that serve it (only for a peer's model)"
    )


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


#: What /health says of a degraded box to a caller without a key: engine errors carry paths,
#: model names and driver messages that are nobody else's business.
GENERIC_REASON = "backend unavailable"


async def health(svc: Services, req: Request) -> Response:
    # 503 while a local engine is dead or failed, so that a load balancer or systemd watchdog
    # notices; everything else (echo, remote providers) is still served meanwhile.
    problems = svc.registry.degraded()
    if problems:
        authorization = req.header("authorization")
        trusted = svc.keys.accepts(authorization) or (
            svc.metrics_key is not None and svc.metrics_key.accepts(authorization)
        )
        reasons = problems if trusted else [GENERIC_REASON]
        return json_response({"status": "degraded", "reasons": reasons}, status=503)
    return json_response({"status": "ok"})


async def version(svc: Services, req: Request) -> Response:
    return json_response({"version": __version__})


async def metrics_text(svc: Services, req: Request) -> Response:
    if svc.metrics_key is not None:
        svc.metrics_key.authenticate(req.header("authorization"))  # 401/403 otherwise
    body, content_type = await svc.metrics.get()
    return Response(200, body, content_type)


async def openapi_json(svc: Services, req: Request) -> Response:
    if svc.openapi is None:
        svc.openapi = orjson.dumps(openapi.build(svc.routes))
    return Response(200, svc.openapi)


async def docs(svc: Services, req: Request) -> Response:
    return Response(200, openapi.DOCS_HTML.encode(), "text/html; charset=utf-8")


async def docs_asset(svc: Services, req: Request, name: str) -> Response:
    kind = openapi.DOCS_ASSETS.get(name)
    folder = openapi.swagger_dir()
    if kind is None or folder is None:
        raise ApiError(404, "No such docs asset", code="not_found")
    body = await asyncio.to_thread((folder / name).read_bytes)
    return Response(200, body, kind, [("cache-control", "public, max-age=86400")])


async def models(svc: Services, req: Request) -> Response:
    data: list[dict[str, Any]] = []
    for c in svc.registry.cards():
        entry: dict[str, Any] = {
            "id": c.id,
            "object": "model",
            "created": c.created,
            "owned_by": c.owned_by,
            "capabilities": sorted(svc.registry.capabilities(c.id)),
        }
        if c.boxes:
            entry["boxes"] = list(c.boxes)
        data.append(entry)
    return json_response({"object": "list", "data": data})


ROUTES = [
    Route(
        "GET",
        "/health",
        health,
        "Health check (the reasons of a degraded state only with an API key)",
        auth=False,
        response=Health,
    ),
    Route("GET", "/version", version, "Version of IIR", auth=False, response=Version),
    Route(
        "GET",
        "/metrics",
        metrics_text,
        "Prometheus metrics (a bearer key when IIR_METRICS_KEY is set)",
        auth=False,
        content_type="text/plain",
    ),
    Route("GET", "/openapi.json", openapi_json, "This document", auth=False),
    Route("GET", "/docs", docs, "Interactive API docs", auth=False, content_type="text/html"),
    Route(
        "GET",
        "/docs/assets/{name}",
        docs_asset,
        "Assets of the docs page",
        auth=False,
        content_type="application/octet-stream",
    ),
    Route("GET", "/v1/models", models, "List available models", response=ModelList),
]
