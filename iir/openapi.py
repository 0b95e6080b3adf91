"""The OpenAPI 3.1 document for every route, and the offline ``/docs`` page.

Request schemas come from the pydantic protocol types, so the document cannot drift from what the
server validates. Swagger UI's assets are served by IIR itself (from the ``swagger-ui-py``
package), because an appliance on a LAN cannot count on reaching a CDN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import __version__
from .protocol import ChatRequest
from .routes import Route

_ERROR = {"$ref": "#/components/schemas/Error"}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["detail", "error"],
        "properties": {
            "detail": {"type": "string"},
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    },
    "Version": {
        "type": "object",
        "required": ["version"],
        "properties": {"version": {"type": "string"}},
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}},
        },
    },
    "Usage": {
        "type": "object",
        "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
        "properties": {
            k: {"type": "integer"} for k in ("prompt_tokens", "completion_tokens", "total_tokens")
        },
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "message", "finish_reason"],
                    "properties": {
                        "index": {"type": "integer"},
                        "message": {
                            "type": "object",
                            "properties": {
                                "role": {"const": "assistant"},
                                "content": {"type": ["string", "null"]},
                                "refusal": {"type": ["string", "null"]},
                                "tool_calls": {"type": "array", "items": {"type": "object"}},
                            },
                        },
                        "finish_reason": {"type": "string"},
                        "logprobs": {"type": ["object", "null"]},
                    },
                },
            },
            "usage": {"$ref": "#/components/schemas/Usage"},
        },
    },
    "ChatCompletionChunkStream": {
        "type": "string",
        "description": "Server-sent events: `data: <chat.completion.chunk JSON>` frames, an "
        "optional usage chunk with `choices: []`, then `data: [DONE]`.",
    },
}

# Per-route request and response documentation; routes not listed get a generic JSON answer.
_OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/health"): {"ok": "Health"},
    ("GET", "/version"): {"ok": "Version"},
    ("GET", "/v1/models"): {"ok": "ModelList"},
    ("POST", "/v1/chat/completions"): {
        "request": "ChatRequest",
        "ok": "ChatCompletion",
        "stream": True,
    },
}


def register_operation(
    method: str, template: str, spec: dict[str, Any], schemas: dict[str, Any] | None = None
) -> None:
    """Lets a feature module document its own routes (keys: request, ok, ok_status, stream)."""
    _OPERATIONS[(method, template)] = spec
    if schemas:
        _SCHEMAS.update(schemas)


def _request_schemas() -> dict[str, Any]:
    schema = ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return {"ChatRequest": schema, **defs}


def build(routes: list[Route]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for r in routes:
        spec = _OPERATIONS.get((r.method, r.template), {})
        ok_status = str(spec.get("ok_status", 200))
        ok_schema = (
            {"$ref": f"#/components/schemas/{spec['ok']}"} if "ok" in spec else {"type": "object"}
        )
        content: dict[str, Any] = {"application/json": {"schema": ok_schema}}
        if spec.get("stream"):
            content["text/event-stream"] = {
                "schema": {"$ref": "#/components/schemas/ChatCompletionChunkStream"}
            }
        if r.template == "/metrics":
            content = {"text/plain": {"schema": {"type": "string"}}}
        elif r.template == "/docs":
            content = {"text/html": {"schema": {"type": "string"}}}
        op: dict[str, Any] = {
            "summary": r.summary or r.template,
            "operationId": (r.method + r.template)
            .lower()
            .replace("/", "_")
            .replace("{", "")
            .replace("}", "")
            .replace(".", "_"),
            "responses": {
                ok_status: {"description": "Success", "content": content},
                "default": {
                    "description": "Error",
                    "content": {"application/json": {"schema": _ERROR}},
                },
            },
        }
        params = [seg[1:-1] for seg in r.template.split("/") if seg.startswith("{")]
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ]
        if "request" in spec:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{spec['request']}"}
                    }
                },
            }
        op["security"] = [{"bearer": []}] if r.auth else []
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
            "schemas": {**_SCHEMAS, **_request_schemas()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


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
