"""``GET /v1/registry/status`` and ``POST /v1/registry/refresh``: what IIR can serve, and on what."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from iir.api.http import Request, Response, json_response
from iir.api.router import Route

if TYPE_CHECKING:
    from iir.api.services import Services


class RegistryModel(BaseModel):
    id: str
    source: str = Field(description="local, echo, peer (another box of the fleet), or the provider")
    state: Literal["ready", "loading", "failed", "unavailable"]
    reason: str | None
    context_length: int | None
    shadowed: bool = Field(False, description="A backend listed earlier serves the same name")
    queue: int | None = Field(None, description="Requests waiting or running on it here")


class RegistryProvider(BaseModel):
    name: str
    configured: bool
    circuit: Literal["closed", "open", "half_open"]
    reason: str | None = None


class Gpu(BaseModel):
    index: int
    name: str | None
    uuid: str | None
    memory_total_bytes: int | None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    utilization_gpu_percent: int | None = None
    utilization_memory_percent: int | None = None
    temperature_celsius: int | None = None
    power_usage_watts: float | None = None
    power_limit_watts: float | None = None


class Hardware(BaseModel):
    gpus: list[Gpu]
    gpu_reason: str | None = Field(description="Why there are no GPU facts (no NVML, no driver)")
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    nvml_version: str | None = None
    cpu_count: int | None
    memory_total_bytes: int | None
    memory_available_bytes: int | None = None
    read_at: float | None = None


class LocalEngine(BaseModel):
    model_config = ConfigDict(extra="allow")
    available: bool
    reason: str | None
    model_dir: str | None = None
    model_dir_reason: str | None = None
    autoload: bool | None = None
    engines: list[dict[str, Any]] | None = None


class Peer(BaseModel):
    url: str
    box: str = Field(description="host:port, as /v1/models marks the peer's models")
    state: Literal["up", "down"] = Field(description="Whether it answered its last poll")
    circuit: Literal["closed", "open", "half_open"]
    reason: str | None
    models: list[str] = Field(description="Models its own engine serves, ready")
    gpu_utilization_percent: int | None
    seen_at: float | None = Field(description="When it last answered its poll")


class RegistryStatus(BaseModel):
    object: Literal["registry.status"]
    models: list[RegistryModel]
    providers: list[RegistryProvider]
    hardware: Hardware
    local_engine: LocalEngine | None = None
    peers: list[Peer] | None = Field(None, description="The fleet's other boxes (IIR_PEERS)")
    degraded: list[str] = Field(description="Why /health answers 503 now (empty when healthy)")
    refreshes: int | None = None
    generated_at: float | None = None


async def status(svc: Services, req: Request) -> Response:
    return json_response(await svc.registry.status())


async def refresh(svc: Services, req: Request) -> Response:
    return json_response(await svc.registry.refresh())


ROUTES = [
    Route(
        "GET",
        "/v1/registry/status",
        status,
        "Models, providers and hardware",
        response=RegistryStatus,
        tags=("registry",),
    ),
    Route(
        "POST",
        "/v1/registry/refresh",
        refresh,
        "Rescan model folders, provider model lists and hardware; returns the status",
        response=RegistryStatus,
        tags=("registry",),
    ),
]
