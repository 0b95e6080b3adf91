"""The fleet's other boxes as one backend (``IIR_PEERS``, ``IIR_PEER_KEY``).

Every few seconds (``IIR_PEER_POLL_SECONDS``) each peer's ``GET /v1/registry/status`` tells which
models its own engine serves, their state and queue depth, and its GPUs' load. Those models join
this box's list (``/v1/models``, marked with the boxes that serve them) and routing's ``@local``
candidates; a request for one is forwarded to the least busy peer that serves it, over the OpenAI
wire format, already scrubbed and admitted here: it carries this box's request id and the peer key
with the ``x-iir-peer`` marker, so the peer runs it on its own backends without limiting,
admitting or forwarding it again.

Names: a model only peers serve is listed as itself; where this box serves the same name, or
several peers do, each peer's copy is also listed (and can be asked for) as ``<model>@<box>``.

A peer that does not answer its poll is dead until it answers again: its models leave the list
and routing skips it. Each peer has the providers' circuit breaker too (:mod:`.providers.client`),
fed by forwarded requests, so a peer whose answers fail is skipped before its next poll says so.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from iir.backends.base import Backend
from iir.backends.providers.base import bad_answer
from iir.backends.providers.client import Upstream
from iir.backends.providers.compat import parse_chunk, parse_completion
from iir.core.errors import ApiError, not_found
from iir.core.protocol import ScrubbedChat
from iir.core.settings import Settings
from iir.core.types import (
    IDLE,
    READY,
    BackendStatus,
    Completion,
    Load,
    ModelCard,
    ModelStatus,
    StreamEvent,
)
from iir.ops.logs import request_id_var

log = logging.getLogger("iir.backends.peers")

SOURCE = "peer"
#: The marker header of a peer hop (``iir.policy.auth.PEER_HEADER``; backends sit below policy).
PEER_HEADER = "x-iir-peer"
#: Bounds on what a peer's status may make this box hold.
MAX_MODELS = 1000
MAX_NAME = 256
STATUS_PATH = "/v1/registry/status"
CHAT_PATH = "/v1/chat/completions"


@dataclass(slots=True, frozen=True)
class PeerModel:
    queue: int
    context_length: int | None


def box_of(url: str) -> str:
    """``host:port`` of a peer's base URL: how lists and logs name the box."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


class Peer:
    """One other box: its last status and the client that reaches it."""

    def __init__(self, url: str, upstream: Upstream) -> None:
        self.url = url
        self.box = box_of(url)
        self.upstream = upstream
        self.models: dict[str, PeerModel] = {}
        self.alive = False
        self.seen_at: float | None = None
        self.reason: str | None = "not polled yet"
        self.gpu_utilization: int | None = None

    @property
    def usable(self) -> bool:
        """Answered its last poll, and its breaker lets requests through."""
        return self.alive and self.upstream.breaker.routing_state() != "open"

    def load(self, model: str) -> Load:
        found = self.models.get(model)
        return Load(
            circuit=self.upstream.breaker.routing_state(),
            queue=found.queue if found is not None else 0,
            latency_s=self.upstream.recent_latency,
        )

    def read_status(self, body: Any) -> None:
        """Keeps the models the peer's own engine serves and is ready to run (never the models
        it knows from its own peers: one hop only)."""
        if not isinstance(body, dict) or not isinstance(body.get("models"), list):
            raise ValueError("the status has no 'models' list")
        models: dict[str, PeerModel] = {}
        for entry in body["models"][:MAX_MODELS]:
            if not isinstance(entry, dict) or entry.get("source") != "local":
                continue
            name = entry.get("id")
            if (
                entry.get("state") != READY
                or entry.get("shadowed")
                or not isinstance(name, str)
                or not 0 < len(name) <= MAX_NAME
                or not name.isprintable()
                or "@" in name
            ):
                continue
            queue = entry.get("queue")
            ctx = entry.get("context_length")
            models[name] = PeerModel(
                queue if isinstance(queue, int) and queue >= 0 else 0,
                ctx if isinstance(ctx, int) and ctx > 0 else None,
            )
        hardware = body.get("hardware")
        gpus = hardware.get("gpus") if isinstance(hardware, dict) else None
        loads: list[int] = [
            g["utilization_gpu_percent"]
            for g in (gpus if isinstance(gpus, list) else [])
            if isinstance(g, dict) and isinstance(g.get("utilization_gpu_percent"), int)
        ]
        self.gpu_utilization = max(loads) if loads else None
        self.models = models

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "box": self.box,
            "state": "up" if self.alive else "down",
            "circuit": self.upstream.breaker.state_name,
            "reason": self.reason,
            "models": sorted(self.models) if self.alive else [],
            "gpu_utilization_percent": self.gpu_utilization,
            "seen_at": self.seen_at,
        }


class PeerBackend(Backend):
    """Every peer of this box, behind one backend: the registry lists their models and routing
    weighs their load like any other candidate's."""

    name = SOURCE
    peer = True

    def __init__(self, settings: Settings, own_names: Callable[[], set[str]]) -> None:
        assert settings.peer_key is not None
        self.poll_seconds = settings.peer_poll_seconds
        # A peer is one hop on the LAN: a failed attempt goes to the next candidate (another
        # peer, or this box's fallbacks) instead of waiting to retry the same box.
        upstream = settings.upstream.model_copy(update={"retries": 0})
        headers = {
            "authorization": f"Bearer {settings.peer_key}",
            PEER_HEADER: socket.gethostname()[:64] or "iir",
        }
        self.peers = [
            Peer(
                url,
                Upstream(
                    f"peer {box_of(url)}", url, headers, upstream, secrets=(settings.peer_key,)
                ),
            )
            for url in settings.peers
        ]
        self.own_names = own_names
        self._pollers: list[asyncio.Task[None]] = []

    # --- names --------------------------------------------------------------------------------

    def _serving(self) -> dict[str, list[Peer]]:
        out: dict[str, list[Peer]] = {}
        for p in self.peers:
            if p.usable:
                for name in p.models:
                    out.setdefault(name, []).append(p)
        return out

    def models(self) -> list[ModelCard]:
        own = self.own_names()
        cards = []
        for name, peers in self._serving().items():
            ctx = min((p.models[name].context_length or 0 for p in peers), default=0) or None
            if name not in own:
                cards.append(ModelCard(name, SOURCE, 0, ctx, tuple(p.box for p in peers)))
            if name in own or len(peers) > 1:
                for p in peers:
                    cards.append(
                        ModelCard(
                            f"{name}@{p.box}", SOURCE, 0, p.models[name].context_length, (p.box,)
                        )
                    )
        return cards

    def resolve(self, name: str) -> str | None:
        model, _, box = name.rpartition("@")
        if model and any(p.box == box and p.usable and model in p.models for p in self.peers):
            return name
        if any(p.usable and name in p.models for p in self.peers):
            return name
        return None

    def _choices(self, target: str) -> list[tuple[Peer, str]]:
        """The peers to try for ``target``, least busy first."""
        model, _, box = target.rpartition("@")
        if model and any(p.box == box for p in self.peers):
            found = [(p, model) for p in self.peers if p.box == box and model in p.models]
        else:
            found = [(p, target) for p in self.peers if target in p.models]
        usable = [c for c in found if c[0].usable]
        usable.sort(key=lambda c: (c[0].load(c[1]).circuit != "closed", c[0].models[c[1]].queue))
        if not usable:
            raise not_found(
                f"The model '{target}' is not available: no peer serves it now",
                code="model_not_found",
                param="model",
            )
        return usable

    def load(self, model: str) -> Load:
        try:
            peer, name = self._choices(model)[0]
        except ApiError:
            return IDLE
        return peer.load(name)

    # --- forwarding ---------------------------------------------------------------------------

    def _body(self, request: ScrubbedChat, model: str, stream: bool) -> bytes:
        body = request.model_dump(mode="json", exclude_unset=True)
        body["model"] = model
        body.pop("stream", None)
        body.pop("stream_options", None)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}  # to settle this box's reservation
        return orjson.dumps(body)

    @staticmethod
    def _headers() -> dict[str, str]:
        rid = request_id_var.get()
        return {"x-request-id": rid} if rid else {}

    async def complete(self, request: ScrubbedChat, model: str) -> Completion:
        choices = self._choices(model)
        for i, (peer, name) in enumerate(choices):
            try:
                body = await peer.upstream.post_json(
                    CHAT_PATH, self._body(request, name, False), self._headers()
                )
            except ApiError as err:
                if i + 1 < len(choices) and err.status >= 500:
                    continue
                raise
            return parse_completion(peer.upstream.provider, body)
        raise AssertionError("no peer")  # pragma: no cover - _choices is never empty

    async def stream(self, request: ScrubbedChat, model: str) -> AsyncIterator[StreamEvent]:
        choices = self._choices(model)
        for i, (peer, name) in enumerate(choices):
            events = peer.upstream.post_sse(
                CHAT_PATH, self._body(request, name, True), self._headers()
            )
            started = finished = False
            try:
                async for _, data in events:
                    started = True
                    if data.strip() == b"[DONE]":
                        finished = True
                        continue
                    if finished:
                        continue
                    for ev in parse_chunk(peer.upstream.provider, data):
                        yield ev
            except ApiError as err:
                if not started and i + 1 < len(choices) and err.status >= 500:
                    continue
                raise
            finally:
                await events.aclose()  # type: ignore[attr-defined]
            if not finished:
                raise bad_answer(peer.upstream.provider, "the stream ended before [DONE]")
            return

    # --- polling ------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._pollers = [loop.create_task(self._poll_loop(p)) for p in self.peers]

    async def close(self) -> None:
        for task in self._pollers:
            task.cancel()
        for task in self._pollers:
            with suppress(asyncio.CancelledError):
                await task
        for p in self.peers:
            await p.upstream.close()

    async def _poll_loop(self, peer: Peer) -> None:
        while True:
            await self.poll(peer)
            await asyncio.sleep(self.poll_seconds)

    async def poll(self, peer: Peer) -> None:
        """Reads one peer's status; a peer that does not answer is dead until it does."""
        timeout = min(self.poll_seconds, 2.0)
        try:
            body = await peer.upstream.get_json(STATUS_PATH, timeout)
            peer.read_status(body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = exc.message if isinstance(exc, ApiError) else type(exc).__name__
            if peer.alive:
                log.warning(
                    "peer unreachable; its models are skipped until it answers",
                    extra={"event": "peer_down", "peer": peer.box, "reason": reason},
                )
            peer.alive, peer.reason = False, reason
            return
        if not peer.alive:
            log.info(
                "peer reachable",
                extra={"event": "peer_up", "peer": peer.box, "count": len(peer.models)},
            )
        peer.alive, peer.reason, peer.seen_at = True, None, time.time()

    async def refresh(self) -> None:
        await asyncio.gather(*(self.poll(p) for p in self.peers))

    def status(self) -> BackendStatus:
        models = [
            ModelStatus(c.id, SOURCE, READY, context_length=c.context_length) for c in self.models()
        ]
        return BackendStatus(models=models, sections={"peers": [p.to_dict() for p in self.peers]})
