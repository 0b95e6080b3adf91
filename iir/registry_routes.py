"""``GET /v1/registry/status`` and ``POST /v1/registry/refresh``: what IIR can serve, and on what."""

from __future__ import annotations

from typing import Any

from . import openapi
from .http import Request, Response, json_response
from .registry import ModelRegistry
from .routes import Route

STATE_VALUES = ["ready", "loading", "failed", "unavailable"]

_NULLABLE_INT = {"type": ["integer", "null"]}
_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_NUM = {"type": ["number", "null"]}

SCHEMAS: dict[str, Any] = {
    "RegistryModel": {
        "type": "object",
        "required": ["id", "source", "state", "reason", "context_length"],
        "properties": {
            "id": {"type": "string"},
            "source": {"type": "string", "description": "local, echo, or the provider's name"},
            "state": {"enum": STATE_VALUES},
            "reason": _NULLABLE_STR,
            "context_length": _NULLABLE_INT,
            "shadowed": {"type": "boolean"},
        },
    },
    "RegistryProvider": {
        "type": "object",
        "required": ["name", "configured", "circuit"],
        "properties": {
            "name": {"type": "string"},
            "configured": {"type": "boolean"},
            "circuit": {"enum": ["closed", "open", "half_open"]},
            "reason": _NULLABLE_STR,
        },
    },
    "Gpu": {
        "type": "object",
        "required": ["index", "name", "uuid", "memory_total_bytes"],
        "properties": {
            "index": {"type": "integer"},
            "name": _NULLABLE_STR,
            "uuid": _NULLABLE_STR,
            "memory_total_bytes": _NULLABLE_INT,
            "memory_used_bytes": _NULLABLE_INT,
            "memory_free_bytes": _NULLABLE_INT,
            "utilization_gpu_percent": _NULLABLE_INT,
            "utilization_memory_percent": _NULLABLE_INT,
            "temperature_celsius": _NULLABLE_INT,
            "power_usage_watts": _NULLABLE_NUM,
            "power_limit_watts": _NULLABLE_NUM,
        },
    },
    "Hardware": {
        "type": "object",
        "required": ["gpus", "gpu_reason", "cpu_count", "memory_total_bytes"],
        "properties": {
            "gpus": {"type": "array", "items": {"$ref": "#/components/schemas/Gpu"}},
            "gpu_reason": {
                "type": ["string", "null"],
                "description": "Why there are no GPU facts (no NVML, no driver), else null",
            },
            "driver_version": _NULLABLE_STR,
            "cuda_driver_version": _NULLABLE_STR,
            "nvml_version": _NULLABLE_STR,
            "cpu_count": _NULLABLE_INT,
            "memory_total_bytes": _NULLABLE_INT,
            "memory_available_bytes": _NULLABLE_INT,
            "read_at": {"type": "number"},
        },
    },
    "LocalEngine": {
        "type": "object",
        "required": ["available", "reason"],
        "properties": {
            "available": {"type": "boolean"},
            "reason": _NULLABLE_STR,
            "model_dir": _NULLABLE_STR,
            "model_dir_reason": _NULLABLE_STR,
            "autoload": {"type": "boolean"},
            "engines": {"type": "array", "items": {"type": "object"}},
        },
    },
    "RegistryStatus": {
        "type": "object",
        "required": ["object", "models", "providers", "hardware", "degraded"],
        "properties": {
            "object": {"const": "registry.status"},
            "models": {"type": "array", "items": {"$ref": "#/components/schemas/RegistryModel"}},
            "providers": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/RegistryProvider"},
            },
            "hardware": {"$ref": "#/components/schemas/Hardware"},
            "local_engine": {"$ref": "#/components/schemas/LocalEngine"},
            "degraded": {"type": "array", "items": {"type": "string"}},
            "refreshes": {"type": "integer"},
            "generated_at": {"type": "number"},
        },
    },
}


def routes(registry: ModelRegistry) -> list[Route]:
    async def status(req: Request) -> Response:
        return json_response(await registry.status())

    async def refresh(req: Request) -> Response:
        return json_response(await registry.refresh())

    return [
        Route("GET", "/v1/registry/status", status, summary="Models, providers and hardware"),
        Route(
            "POST",
            "/v1/registry/refresh",
            refresh,
            summary="Rescan model folders, provider model lists and hardware; returns the status",
        ),
    ]


def document() -> None:
    openapi.register_operation("GET", "/v1/registry/status", {"ok": "RegistryStatus"}, SCHEMAS)
    openapi.register_operation("POST", "/v1/registry/refresh", {"ok": "RegistryStatus"})
