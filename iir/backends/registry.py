"""Which backend serves which model name, and the status of every model, provider and GPU."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from iir.backends.base import Backend
from iir.core.errors import ApiError, not_found
from iir.core.types import READY, Load, ModelCard
from iir.ops.hardware import NVML, HardwareFacts, read_hardware

log = logging.getLogger("iir.backends.registry")

HARDWARE_TTL_S = 2.0


def _queue(backend: Backend, name: str) -> int | None:
    try:
        target = backend.resolve(name)
    except ApiError:
        return None
    return backend.load(target).queue if target is not None else None


class ModelRegistry:
    def __init__(self, backends: list[Backend]) -> None:
        self.backends = list(backends)
        self._hardware: HardwareFacts | None = None
        self._refreshing: asyncio.Task[dict[str, Any]] | None = None
        self.refreshes = 0  # completed refreshes, reported in the status document

    def resolve(self, name: str, own_only: bool = False) -> tuple[Backend, str]:
        """The backend serving ``name`` and its own id for it; ``own_only`` leaves out the fleet's
        other boxes (a request they forwarded here runs here or nowhere)."""
        for backend in self.backends:
            if own_only and backend.peer:
                continue
            target = backend.resolve(name)
            if target is not None:
                return backend, target
        raise not_found(
            f"The model '{name}' does not exist or is not available; see GET /v1/models",
            code="model_not_found",
            param="model",
        )

    def local_cards(self) -> list[ModelCard]:
        return [card for b in self.backends if b.local for card in b.models()]

    def peer_cards(self) -> list[ModelCard]:
        return [card for b in self.backends if b.peer for card in b.models()]

    def own_names(self) -> set[str]:
        """Names this box's own backends serve (a peer's copy of one is listed qualified)."""
        return {card.id for b in self.backends if not b.peer for card in b.models()}

    def load_probe(self, name: str) -> Callable[[], Load] | None:
        try:
            backend, target = self.resolve(name)
        except ApiError:  # unknown, or its provider is not configured
            return None
        return functools.partial(backend.load, target)

    def cards(self) -> list[ModelCard]:
        seen: dict[str, ModelCard] = {}
        for backend in self.backends:
            for card in backend.models():
                seen.setdefault(card.id, card)
        return list(seen.values())

    def capabilities(self, name: str) -> frozenset[str]:
        """The API surfaces the model ``name`` serves (none when nothing serves it)."""
        try:
            backend, target = self.resolve(name)
        except ApiError:
            return frozenset()
        return backend.capabilities(target)

    def serving(self, surface: str) -> list[tuple[str, bool]]:
        """Every model that serves ``surface`` now, with whether it runs on this box."""
        out: dict[str, bool] = {}
        for backend in self.backends:
            for card in backend.models():
                if card.id not in out and surface in self.capabilities(card.id):
                    out[card.id] = backend.local
        return list(out.items())

    def degraded(self) -> list[str]:
        return [reason for backend in self.backends for reason in backend.degraded()]

    def count_tokens(self, model: str, text: str) -> int | None:
        """Tokens in the serving model's own tokenizer where its backend has one (local models)."""
        for backend in self.backends:
            if backend.resolve(model) is not None:
                return backend.count_tokens(model, text)
        return None

    # --- status and refresh -------------------------------------------------------------------

    async def hardware(self, fresh: bool = False) -> HardwareFacts:
        # Memory, utilization and temperature move: a status older than a moment is re-read.
        stale = self._hardware is None or time.time() - self._hardware.read_at > HARDWARE_TTL_S
        if stale or fresh:
            if fresh:
                await asyncio.to_thread(NVML.reset)
            self._hardware = await asyncio.to_thread(read_hardware)
        assert self._hardware is not None
        return self._hardware

    async def status(self) -> dict[str, Any]:
        models: list[dict[str, Any]] = []
        providers: list[dict[str, Any]] = []
        sections: dict[str, Any] = {}
        seen: set[str] = set()
        for backend in self.backends:
            st = backend.status()
            for m in st.models:
                entry = {
                    "id": m.id,
                    "source": m.source,
                    "state": m.state,
                    "reason": m.reason,
                    "context_length": m.context_length,
                    # A name served by an earlier backend shadows this one.
                    "shadowed": m.id in seen,
                }
                if backend.local and m.state == READY:
                    # Requests waiting or running on it here (the fleet's peers read it).
                    entry["queue"] = _queue(backend, m.id)
                seen.add(m.id)
                models.append(entry)
            if st.provider is not None:
                p = st.provider
                providers.append(
                    {
                        "name": p.name,
                        "configured": p.configured,
                        "circuit": p.circuit,
                        "reason": p.reason,
                    }
                )
            sections.update(st.sections)
        hw = await self.hardware()
        return {
            "object": "registry.status",
            "models": models,
            "providers": providers,
            "hardware": hw.to_dict(),
            **sections,
            "degraded": self.degraded(),
            "refreshes": self.refreshes,
            "generated_at": time.time(),
        }

    async def refresh(self) -> dict[str, Any]:
        """Rescans models, provider lists and hardware; concurrent callers share one refresh."""
        task = self._refreshing
        if task is None or task.done():
            task = asyncio.ensure_future(self._refresh())
            self._refreshing = task
        # A caller that goes away must not cancel the refresh the others are waiting for.
        return await asyncio.shield(task)

    async def _refresh(self) -> dict[str, Any]:
        started = time.monotonic()
        for backend in self.backends:
            try:
                await backend.refresh()
            except Exception:
                log.exception("refresh failed", extra={"backend": backend.name})
        await self.hardware(fresh=True)
        self.refreshes += 1
        log.info(
            "registry refreshed",
            extra={
                "event": "registry_refresh",
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        return await self.status()
