"""The OpenAPI 3.1 document for every route, and the offline ``/docs`` page.

Every schema comes from the models declared on the routes (:class:`~iir.api.router.Route`):
request models in pydantic's validation mode, answers in serialization mode. Nothing here is
written by hand, so the document cannot drift from what the server validates and answers.
Swagger UI's assets are served by IIR itself (from the ``swagger-ui-py`` package), because an
appliance on a LAN cannot count on reaching a CDN.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema

from iir import __version__
from iir.api.router import JSON, Route

REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class Error(BaseModel):
    """Every error: the product's ``detail`` and OpenAI's ``error`` object."""

    detail: str
    error: ErrorDetail


class _Schemas:
    """Collects component schemas from models, each under its own name."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(self, model: Any, mode: str) -> dict[str, Any]:
        schema = TypeAdapter(model).json_schema(
            mode=mode,  # type: ignore[arg-type]
            ref_template=REF,
            schema_generator=GenerateJsonSchema,
        )
        for name, found in schema.pop("$defs", {}).items():
            self._add(name, found)
        if isinstance(model, type) and issubclass(model, BaseModel):
            name = model.__name__
            self._add(name, schema)
            return {"$ref": REF.format(model=name)}
        return schema

    def _add(self, name: str, schema: dict[str, Any]) -> None:
        """One name, one schema: two models of the same name (or one model whose validation and
        serialization schemas differ) would have the second silently replace the first for
        every route that refers to it."""
        if self.components.setdefault(name, schema) != schema:
            raise ValueError(f"two different schemas are named {name!r}; rename one model")


def _operation_id(r: Route) -> str:
    out = (r.method + r.template).lower()
    for a, b in (("/", "_"), ("{", ""), ("}", ""), (".", "_")):
        out = out.replace(a, b)
    return out


def _security(r: Route) -> list[dict[str, list[str]]]:
    if not r.auth:
        return []
    return [{"bearer": []}, {"apiKey": []}] if r.key_header else [{"bearer": []}]


def build(routes: list[Route]) -> dict[str, Any]:
    schemas = _Schemas()
    error = schemas.ref(Error, "serialization")
    paths: dict[str, Any] = {}
    for r in routes:
        if r.response is not None:
            content: dict[str, Any] = {
                r.content_type: {"schema": schemas.ref(r.response, "serialization")}
            }
        elif r.content_type == JSON:
            content = {JSON: {"schema": {"type": "object"}}}
        else:
            content = {r.content_type: {"schema": {"type": "string"}}}
        if r.stream is not None:
            # Before OpenAPI 3.2 an event stream's ``schema`` describes one event (its fields, as
            # an SSE parser reads them); each ``data`` is a JSON chunk, then ``[DONE]``.
            event = schemas.ref(r.stream, "serialization")
            content["text/event-stream"] = {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {
                            "type": "string",
                            "description": "A JSON chunk (x-iir-event), an error object, or [DONE]",
                            "contentMediaType": "application/json",
                        },
                        "event": {"type": "string"},
                        "id": {"type": "string"},
                        "retry": {"type": "integer"},
                    },
                },
                "x-iir-event": event,
            }
        responses: dict[str, Any] = {str(r.status): {"description": "Success", "content": content}}
        for status, model in r.more:
            responses[str(status)] = {
                "description": "Success",
                "content": {JSON: {"schema": schemas.ref(model, "serialization")}},
            }
        shape = schemas.ref(r.error_model, "serialization") if r.error_model else error
        responses["default"] = {"description": "Error", "content": {JSON: {"schema": shape}}}
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": _operation_id(r),
            "responses": responses,
            "security": _security(r),
        }
        if r.tags:
            op["tags"] = list(r.tags)
        params = [seg[1:-1] for seg in r.template.split("/") if seg.startswith("{")]
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ]
        if r.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {JSON: {"schema": schemas.ref(r.request, "validation")}},
            }
        paths.setdefault(r.template, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "IIR — Intelligent Inference Router",
            "version": __version__,
            "description": "OpenAI-compatible LLM gateway. Authenticate with "
            "`Authorization: Bearer <API_KEY>`.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                # Anthropic's clients send the key as x-api-key (the Messages API routes).
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }


@functools.cache
def swagger_dir() -> Path | None:
    try:
        import swagger_ui  # the swagger-ui-py distribution ships Swagger UI 5 (OpenAPI 3.1)
    except ImportError:
        return None
    path = Path(swagger_ui.__file__).parent / "static"
    return path if path.is_dir() else None


DOCS_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "application/javascript; charset=utf-8",
    "swagger-ui-standalone-preset.js": "application/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}

DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>IIR API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/swagger-ui-standalone-preset.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui",
presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "BaseLayout"});</script>
</body></html>
"""
