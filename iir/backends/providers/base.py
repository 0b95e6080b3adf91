"""The neutral base every remote provider shares: its configuration (key, base URL), name
resolution (``<provider>/<model>``), circuit state for routing, and the model catalogue kept fresh
in the background. A provider module adds only its wire format on top.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from contextlib import suppress
from typing import Any, ClassVar

from iir.backends.base import Backend
from iir.backends.providers.client import Upstream
from iir.core.errors import ApiError
from iir.core.settings import UpstreamSettings
from iir.core.types import (
    IDLE,
    READY,
    BackendStatus,
    Load,
    ModelCard,
    ModelStatus,
    ProviderStatus,
)

log = logging.getLogger("iir.providers")


class ProviderBackend(Backend):
    """What every remote provider shares: configuration, name resolution, the model catalogue."""

    name: ClassVar[str]
    key_vars: ClassVar[tuple[str, ...]] = ()  # first non-empty wins (aliases after the main one)
    key_required: ClassVar[bool] = True
    base_var: ClassVar[str]
    default_base_url: ClassVar[str | None] = None
    catalogue: ClassVar[tuple[str, ...]] = ()
    models_path: ClassVar[str | None] = "/models"

    def __init__(self, env: Mapping[str, str], settings: UpstreamSettings) -> None:
        self.settings = settings
        self.prefix = self.name + "/"
        self.key = next((env[v].strip() for v in self.key_vars if env.get(v, "").strip()), "")
        self.base_url = env.get(self.base_var, "").strip() or self.default_base_url or ""
        missing = []
        if self.key_required and not self.key:
            missing.append(" or ".join(self.key_vars))
        if not self.base_url:
            missing.append(self.base_var)
        self.missing = " and ".join(missing)
        self._cards = [ModelCard(self.prefix + m, self.name) for m in self.catalogue]
        self._refresher: asyncio.Task[None] | None = None
        self.upstream = (
            None
            if self.missing
            else Upstream(
                self.name, self.base_url, self.auth_headers(), settings, secrets=(self.key,)
            )
        )

    @property
    def configured(self) -> bool:
        return not self.missing

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"} if self.key else {}

    def models(self) -> list[ModelCard]:
        return list(self._cards) if self.configured else []

    def resolve(self, name: str) -> str | None:
        if not name.startswith(self.prefix):
            return None
        if self.missing:
            raise ApiError(
                404,
                f"The model '{name}' is not available: provider {self.name} is not configured "
                f"(set {self.missing})",
                code="model_not_found",
                param="model",
            )
        target = name[len(self.prefix) :]
        if not target:
            raise ApiError(
                404, f"The model '{name}' names no {self.name} model", code="model_not_found"
            )
        return target

    def load(self, model: str) -> Load:
        up = self.upstream
        if up is None:
            return IDLE
        return Load(circuit=up.breaker.routing_state(), latency_s=up.recent_latency)

    def status(self) -> BackendStatus:
        """The registry's view: the listed models, and whether the provider is usable now."""
        if self.upstream is None:
            provider = ProviderStatus(self.name, False, reason=f"set {self.missing}")
        else:
            provider = ProviderStatus(self.name, True, self.upstream.breaker.state_name)
        models = [
            ModelStatus(c.id, self.name, READY, context_length=c.context_length)
            for c in self.models()
        ]
        return BackendStatus(models=models, provider=provider)

    async def refresh(self) -> None:
        if self.configured and self.models_path:
            await self.refresh_models()

    def _up(self) -> Upstream:
        assert self.upstream is not None  # resolve() refused the request otherwise
        return self.upstream

    # --- the model list -----------------------------------------------------------------------

    async def start(self) -> None:
        if self.configured and self.models_path:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with suppress(asyncio.CancelledError):
                await self._refresher
        if self.upstream is not None:
            await self.upstream.close()

    async def _refresh_loop(self) -> None:
        while True:
            await self.refresh_models()
            await asyncio.sleep(self.settings.models_refresh_seconds)

    async def refresh_models(self) -> None:
        """Replaces the catalogue with the provider's own list; keeps the old one on failure."""
        assert self.models_path is not None
        try:
            body = await self._up().get_json(self.models_path, self.settings.models_timeout)
            cards = self.parse_models(body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = exc.message if isinstance(exc, ApiError) else type(exc).__name__
            log.warning(
                "model list refresh failed; keeping the previous list",
                extra={"provider": self.name, "reason": reason},
            )
            return
        if cards:
            self._cards = cards

    def parse_models(self, body: Any) -> list[ModelCard]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise ValueError("model list has no 'data' array")
        cards = []
        for item in data:
            if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]:
                created = item.get("created")
                cards.append(
                    ModelCard(
                        self.prefix + item["id"],
                        self.name,
                        created if isinstance(created, int) else 0,
                        item.get("context_length")
                        if isinstance(item.get("context_length"), int)
                        else None,
                    )
                )
        return cards


def bad_answer(provider: str, why: str) -> ApiError:
    return ApiError(502, f"Upstream provider error: {provider}: {why}")


def as_object(value: Any) -> dict[str, Any]:
    """A JSON object from a provider's answer, or an empty one where it sent something else."""
    return value if isinstance(value, dict) else {}
