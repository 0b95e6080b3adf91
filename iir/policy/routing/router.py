"""Turns a request, the policy and the live state into an ordered list of models to try.

The first candidate runs; the rest are fallbacks tried when it fails before any byte reached the
client. Each decision says why in one short sentence, and lists what was left out and why, so
that an operator can read a routing choice without reading this code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from iir.core.errors import ApiError, shown
from iir.core.protocol import ChatRequest
from iir.core.settings import STRATEGIES
from iir.core.types import Load, ModelSource
from iir.ops import metrics
from iir.policy.routing.classifier import Category, ClassifierError, classify, native_scan
from iir.policy.routing.features import Features, extract
from iir.policy.routing.rules import LOCAL_WILDCARD, ModelPolicy, Policy
from iir.policy.tokens import count_text

LOCAL_FIRST = STRATEGIES[0]
AUTO_MODELS = frozenset({"auto", "iir/auto"})
AVAILABILITY_TTL = 1.0  # seconds a scan of which policy models are served stays valid


def is_auto(model: str) -> bool:
    return model in AUTO_MODELS


@dataclass(slots=True)
class Option:
    """One model that could run this request, with what routing weighs."""

    name: str
    local: bool
    tier: int
    cost: float
    load: Load
    context_length: int
    #: Served by another box of the fleet (a peer's own engine, which "@local" covers too).
    peer: bool = False

    # Between equals, the shorter queue wins, then this box over a peer, then the faster.
    def quality_key(self) -> tuple[Any, ...]:
        return (
            self.load.circuit != "closed",
            -self.tier,
            self.cost,
            not self.local,
            self.load.queue,
            self.peer,
            self._lat(),
        )

    def cost_key(self) -> tuple[Any, ...]:
        return (
            self.load.circuit != "closed",
            self.cost,
            -self.tier,
            not self.local,
            self.load.queue,
            self.peer,
            self._lat(),
        )

    def _lat(self) -> float:
        return self.load.latency_s if self.load.latency_s is not None else 0.0


@dataclass(slots=True)
class Decision:
    candidates: list[str]
    category: Category
    strategy: str
    reason: str
    features: Features
    excluded: list[tuple[str, str]] = field(default_factory=list)
    explicit: bool = False
    seconds: float = 0.0

    @property
    def model(self) -> str:
        return self.candidates[0]

    def headers(self, served: str | None = None) -> list[tuple[str, str]]:
        """The ``x-iir-route-*`` response headers (ASCII, as HTTP wants)."""
        return [
            ("x-iir-route-model", _header_safe(served or self.model)),
            ("x-iir-route-strategy", self.strategy),
            ("x-iir-route-category", self.category.name),
            ("x-iir-route-reason", _header_safe(self.reason)),
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "route.decision",
            "model": self.model,
            "candidates": self.candidates,
            "strategy": self.strategy,
            "category": self.category.name,
            "confidence": round(self.category.confidence, 3),
            "cues": list(self.category.cues),
            "reason": self.reason,
            "explicit": self.explicit,
            "features": self.features.to_dict(),
            "excluded": [{"model": m, "why": why} for m, why in self.excluded],
            "decision_us": round(self.seconds * 1e6, 1),
        }


def _header_safe(text: str) -> str:
    out = text.encode("ascii", "replace").decode("ascii")
    return "".join(c if c.isprintable() else " " for c in out)[:300]


# (policy entry, model name, its load probe, context length the backend reports, on a peer)
_Available = tuple[ModelPolicy, str, Callable[[], Load], int | None, bool]


def no_route(why: str) -> ApiError:
    return ApiError(503, f"Classifier error: {why}", code="classifier_error")


def check_strategy(value: str | None, default: str) -> str:
    if value is None or not value.strip():
        return default
    value = value.strip().lower()
    if value not in STRATEGIES:
        raise ApiError(
            400,
            f"Invalid x-iir-strategy {shown(value, 32)!r}: must be one of {', '.join(STRATEGIES)}",
            param="x-iir-strategy",
        )
    return value


class Router:
    def __init__(
        self,
        policy: Policy,
        registry: ModelSource,
        strategy: str = LOCAL_FIRST,
        local_max_queue: int = 8,
        last_resort: str | None = None,
    ) -> None:
        """``last_resort`` names a model tried after every routed candidate, whatever the policy
        says about it, and alone when no policy model can serve (``IIR_ROUTING_LAST_RESORT``)."""
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown routing strategy {strategy!r}")
        self.policy = policy
        self.registry = registry
        self.strategy = strategy
        self.local_max_queue = local_max_queue
        self.last_resort = last_resort or None
        self._label_cache: dict[tuple[str, str, str], Any] = {}
        self._avail: tuple[float, list[_Available], Callable[[], Load] | None] | None
        self._avail = None
        # The token counter checks its tables on first use (~0.2 s): pay that at start-up, not
        # in the first routed request.
        count_text("warm-up")
        native_scan()  # the classifier's Rust tables, built once per process (~0.2 s)

    # --- candidates ---------------------------------------------------------------------------

    def _available(self) -> list[_Available]:
        """What :meth:`_scan` found, re-scanned at most every :data:`AVAILABILITY_TTL` seconds:
        models come and go on refreshes, not per request, and resolving every policy model on
        every request would cost more than the rest of the decision."""
        return self._fresh()[1]

    def _last_resort_probe(self) -> Callable[[], Load] | None:
        """The last resort's load probe, or None when it is not set or nothing serves it now."""
        return self._fresh()[2]

    def _fresh(self) -> tuple[float, list[_Available], Callable[[], Load] | None]:
        now = time.monotonic()
        if self._avail is None or now - self._avail[0] > AVAILABILITY_TTL:
            # The first of each name only: decided here, once, instead of in every request.
            found: dict[str, _Available] = {}
            for a in self._scan():
                found.setdefault(a[1], a)
            last = self.registry.load_probe(self.last_resort) if self.last_resort else None
            self._avail = (now, list(found.values()), last)
        return self._avail

    def _scan(self) -> Iterator[_Available]:
        """(policy entry, model name, its load probe, known context, on a peer) for each model
        of the policy that some backend serves now; ``@local`` covers the models of the fleet's
        other boxes' engines too."""
        for mp in self.policy.models:
            if mp.name == LOCAL_WILDCARD:
                for card in self.registry.local_cards():
                    probe = self.registry.load_probe(card.id)
                    if probe is not None:
                        yield mp, card.id, probe, card.context_length, False
                for card in self.registry.peer_cards():
                    probe = self.registry.load_probe(card.id)
                    if probe is not None:
                        yield mp, card.id, probe, card.context_length, True
                continue
            probe = self.registry.load_probe(mp.name)
            if probe is not None:
                yield mp, mp.name, probe, None, False

    def _options(
        self, f: Features, category: str
    ) -> tuple[list[Option], list[tuple[str, str]], int]:
        options: list[Option] = []
        excluded: list[tuple[str, str]] = []
        out_tokens = f.output_tokens or self.policy.default_output_tokens
        needed = f.prompt_tokens + out_tokens
        found = self._available()
        for mp, name, probe, ctx, peer in found:
            context = ctx or mp.context_length
            tier = mp.quality[category]
            why = None
            if needed > context:
                why = f"context {context} < {needed} tokens needed"
            elif f.needs_tools and not mp.tools:
                why = "no tool calling"
            elif f.needs_vision and not mp.vision:
                why = "no image input"
            elif f.needs_structured and not mp.structured_output:
                why = "no structured output"
            elif tier == 0:
                why = f"policy: never for {category}"
            load = probe()
            if why is None and load.circuit == "open":
                why = "circuit open"
            if why is not None:
                excluded.append((name, why))
                continue
            options.append(
                Option(
                    name=name,
                    local=mp.local,
                    tier=tier,
                    cost=mp.cost(f.prompt_tokens, out_tokens),
                    load=load,
                    context_length=context,
                    peer=peer,
                )
            )
        return options, excluded, len(found)

    # --- strategies ---------------------------------------------------------------------------

    def _order(
        self, strategy: str, category: str, options: list[Option]
    ) -> tuple[list[Option], str]:
        if strategy == "quality":
            ordered = sorted(options, key=Option.quality_key)
            return (
                ordered,
                f"best quality tier for {category} ({ordered[0].tier})" if ordered else "",
            )
        if strategy == "cost":
            ordered = sorted(options, key=Option.cost_key)
            if not ordered:
                return ordered, ""
            return ordered, f"cheapest model able to serve it (~${ordered[0].cost:.6f})"
        local = sorted((o for o in options if o.local), key=Option.quality_key)
        remote = sorted((o for o in options if not o.local), key=Option.quality_key)
        if strategy == "local-only":
            return local, f"local only; best local tier for {category}" if local else ""
        if strategy == "remote-only":
            return remote, f"remote only; best remote tier for {category}" if remote else ""
        # local-first
        if category in self.policy.send_out:
            why_not_local = f"policy sends {category} to a remote model"
            usable, deferred = [], local
        else:
            busy = [o for o in local if o.load.queue > self.local_max_queue]
            usable = [o for o in local if o.load.queue <= self.local_max_queue]
            deferred = busy
            why_not_local = (
                f"local queue {busy[0].load.queue} over {self.local_max_queue}"
                if busy and not usable
                else "no local model can serve it"
            )
        ordered = usable + remote + deferred
        if usable:
            reason = f"local model can serve {category}"
        elif remote:
            reason = f"{why_not_local}; best remote tier for {category}"
        elif deferred:
            reason = f"{why_not_local}, but no remote model can; local anyway"
        else:
            reason = ""
        return ordered, reason

    # --- the decision -------------------------------------------------------------------------

    def decide(
        self,
        chat: ChatRequest,
        strategy: str | None = None,
        explicit: str | None = None,
        prompt_tokens: int | None = None,
    ) -> Decision:
        """The decision for ``chat``; ``explicit`` names a model the client asked for by name,
        which then runs first and gets the routed candidates as fallbacks; ``prompt_tokens`` is the
        prompt's size when the caller counted it already."""
        started = time.perf_counter()
        strategy = strategy or self.strategy
        try:
            f = extract(chat, prompt_tokens)
            category = classify(f)
        except ClassifierError as exc:
            self._count(strategy, "unknown", "none", time.perf_counter() - started)
            raise no_route(str(exc)) from None
        except Exception as exc:
            self._count(strategy, "unknown", "none", time.perf_counter() - started)
            raise no_route(f"cannot read the request's features ({type(exc).__name__})") from None
        options, excluded, available = self._options(f, category.name)
        ordered, reason = self._order(strategy, category.name, options)
        names = [o.name for o in ordered]
        last = self._last_resort(names)
        if last is not None:
            if not names:
                why = self._why_none(strategy, available, options, excluded)
                reason = f"last resort: {why.removeprefix('no model can serve this request: ')}"
            names.append(last)
        if explicit is not None:
            fallbacks = (
                [n for n in names if n != explicit] if self.policy.explicit_fallbacks else []
            )
            names = [explicit, *fallbacks]
            reason = f"requested explicitly; fallbacks by {strategy}"
        elif not names:
            why = self._why_none(strategy, available, options, excluded)
            self._count(strategy, category.name, "none", time.perf_counter() - started)
            raise no_route(why)
        d = Decision(
            candidates=names,
            category=category,
            strategy=strategy,
            reason=reason,
            features=f,
            excluded=excluded,
            explicit=explicit is not None,
        )
        d.seconds = time.perf_counter() - started
        self._count(strategy, category.name, names[0], d.seconds)
        return d

    def _last_resort(self, names: list[str]) -> str | None:
        """The last resort to append to ``names``: set, served now, circuit not open, not there."""
        if self.last_resort is None or self.last_resort in names:
            return None
        probe = self._last_resort_probe()
        if probe is None or probe().circuit == "open":
            return None
        return self.last_resort

    def _why_none(
        self,
        strategy: str,
        available: int,
        options: list[Option],
        excluded: list[tuple[str, str]],
    ) -> str:
        if not self.policy.models:
            return "no model can serve this request: the routing policy lists no models"
        if available == 0:
            return "no model can serve this request: none of the policy's models is available"
        if not options and any(why == "circuit open" for _, why in excluded):
            # every model able to serve it was excluded for its open circuit
            return "no model can serve this request: all circuits are open"
        detail = "; ".join(f"{m}: {why}" for m, why in excluded[:4])
        if options:
            side = "local" if strategy == "local-only" else "remote"
            why = f"strategy {strategy} allows no {side} model able to serve it"
            return f"no model can serve this request: {why}" + (f" ({detail})" if detail else "")
        return f"no model can serve this request: policy forbids every option ({detail})"

    def _count(self, strategy: str, category: str, target: str, seconds: float) -> None:
        key = (strategy, category, target)
        child = self._label_cache.get(key)
        if child is None:
            child = metrics.ROUTE_DECISIONS.labels(strategy, category, target)
            self._label_cache[key] = child
        child.inc()
        metrics.ROUTE_DECISION_SECONDS.observe(seconds)
