"""The request limits: per client IP, and per API key in requests and tokens per minute, and
the requests each key and each address may have in flight at once.

Each rate limit is a GCRA limiter: in Rust, in this process (:mod:`iir.policy.ratelimit`), or,
for a fleet of boxes, on a shared Redis/Valkey server (:class:`SharedLimits`, ``IIR_STATE_URL``).
This module decides the keys, turns refusals into 429 answers with ``Retry-After``, and builds
OpenAI's ``x-ratelimit-*`` headers. The rate checks are coroutines because the shared limiter
waits for its server; the in-process ones never suspend. Rates bound how often a client may
ask; the in-flight caps (always this box's own) bound how much it may hold at once (slow
streams, long polls, bodies that trickle), which a rate alone does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from iir.core.errors import ApiError
from iir.core.settings import Settings
from iir.ops import metrics
from iir.policy.ratelimit import Decision, RateLimiter, client_ip, ip_key

if TYPE_CHECKING:
    from iir.store.state import StateStore

log = logging.getLogger("iir.policy.limits")

Headers = list[tuple[str, str]]
#: ``adjust(key_id, delta)``: charges (positive) or refunds (negative) reserved tokens.
Adjust = Callable[[str, int], None]

#: The largest cost handed to the limiter: costs are 64-bit integers there and are multiplied in
#: floating point, exact up to 2**53. Anything above is refused as too large anyway.
MAX_COST = 2**53


def _clamp(tokens: int) -> int:
    return min(max(0, tokens), MAX_COST)


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``120ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest}s"


def _refusal(scope: str, decision: Decision, message: str = "Rate limit exceeded") -> ApiError:
    metrics.RATE_LIMITED.labels(scope).inc()
    headers: Headers = []
    if math.isfinite(decision.retry_after_seconds):
        headers.append(("retry-after", str(max(1, math.ceil(decision.retry_after_seconds)))))
    return ApiError(429, message, code="rate_limit_exceeded", headers=headers)


class InFlight:
    """Requests in flight per key, at most ``cap`` each (0: no cap). Memory is bounded by the
    requests in flight: a key's entry goes when its last request ends."""

    __slots__ = ("cap", "counts", "scope")

    def __init__(self, scope: str, cap: int) -> None:
        self.scope = scope
        self.cap = cap
        self.counts: dict[str, int] = {}

    def acquire(self, key: str) -> Slot:
        """Takes a slot for ``key`` or raises 429; the caller releases the slot once."""
        held = self.counts.get(key, 0)
        if self.cap and held >= self.cap:
            metrics.RATE_LIMITED.labels(self.scope).inc()
            raise ApiError(
                429,
                f"Too many requests in flight (at most {self.cap} at once); retry when one ends",
                code="rate_limit_exceeded",
                headers=[("retry-after", "1")],
            )
        self.counts[key] = held + 1
        return Slot(self, key)

    def release(self, key: str) -> None:
        held = self.counts.get(key, 0) - 1
        if held > 0:
            self.counts[key] = held
        else:
            self.counts.pop(key, None)


class Slot:
    """One request's place in an :class:`InFlight` count; :meth:`release` is idempotent."""

    __slots__ = ("key", "owner")

    def __init__(self, owner: InFlight, key: str) -> None:
        self.owner: InFlight | None = owner
        self.key = key

    def release(self) -> None:
        if self.owner is not None:
            self.owner.release(self.key)
            self.owner = None


class Limits:
    """This box's own limits, in process."""

    #: Whether the limits are shared by a fleet (:class:`SharedLimits`).
    shared = False

    def __init__(self, settings: Settings) -> None:
        self.per_ip = RateLimiter(settings.rate_limit_per_ip)
        self.probes = RateLimiter(settings.probe_rate_limit_per_ip)
        self.ip_inflight = InFlight("ip_inflight", settings.max_inflight_per_ip)
        self.key_inflight = InFlight("key_inflight", settings.max_inflight_per_key)
        self.key_requests = RateLimiter(settings.rate_limit_rpm_per_key)
        self.key_tokens = RateLimiter(settings.rate_limit_tpm_per_key)
        self.trusted = settings.trusted_proxies
        self._ip_keys: dict[str, str] = {}

    def client(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address (X-Forwarded-For only from trusted proxies)."""
        return client_ip(peer, forwarded_for, self.trusted) if self.trusted else peer

    def _ip_key(self, client: str) -> str:
        key = self._ip_keys.get(client)
        if key is None:
            if len(self._ip_keys) > 10_000:
                self._ip_keys.clear()  # a cache, not state: bounded however many clients come
            key = self._ip_keys[client] = ip_key(client)
        return key

    async def start(self) -> None:
        """Called once on the server's event loop before the first request."""

    async def close(self) -> None:
        """Called once at shutdown."""

    async def check_ip(self, client: str) -> None:
        if not self.per_ip.enabled:
            return
        decision = self.per_ip.check(self._ip_key(client))
        if not decision.allowed:
            raise _refusal("ip", decision)

    def check_probe(self, client: str) -> None:
        """``/health`` and ``/metrics``: their own budget per address, apart from the API's, so
        that a client using up its requests cannot lock out the monitoring on the same host."""
        if not self.probes.enabled:
            return
        decision = self.probes.check(self._ip_key(client))
        if not decision.allowed:
            raise _refusal("probe", decision)

    def enter_ip(self, client: str) -> Slot:
        """A place among the address's requests in flight (IPv6 grouped by /64), or 429."""
        return self.ip_inflight.acquire(self._ip_key(client))

    def enter_key(self, key_id: str) -> Slot:
        """A place among the key's requests in flight, or 429."""
        return self.key_inflight.acquire(key_id)

    async def check_key(self, key_id: str) -> Headers:
        """Admits one request for the key; returns the ``x-ratelimit-*-requests`` headers."""
        if not self.key_requests.enabled:
            return []
        return _requests_headers(self.key_requests.check(key_id))

    async def reserve_tokens(self, key_id: str, tokens: int) -> Reservation:
        """Reserves prompt + max output tokens at admission; the caller settles it once the
        answer's real size is known (success, failure or cancellation alike)."""
        tokens = max(1, _clamp(tokens))
        if not self.key_tokens.enabled:
            return Reservation(self.key_tokens.adjust, key_id, 0, [])
        decision = self.key_tokens.check(key_id, tokens)
        return self._reservation(key_id, tokens, decision, self.key_tokens.adjust)

    def _reservation(
        self, key_id: str, tokens: int, decision: Decision, adjust: Adjust
    ) -> Reservation:
        if not decision.allowed:
            if tokens > self.key_tokens.per_minute + self.key_tokens.burst:
                message = (
                    f"Request too large: {tokens} tokens exceed the limit of "
                    f"{self.key_tokens.per_minute} tokens per minute"
                )
            else:
                message = "Rate limit exceeded"
            err = _refusal("key_tokens", decision, message)
            err.headers += _headers("tokens", decision)
            raise err
        return Reservation(adjust, key_id, tokens, _headers("tokens", decision))


def _requests_headers(decision: Decision) -> Headers:
    if not decision.allowed:
        err = _refusal("key_requests", decision)
        err.headers += _headers("requests", decision)
        raise err
    return _headers("requests", decision)


class Reservation:
    """Tokens reserved for one request; :meth:`settle` gives back what was not used, once, to
    the limiter that reserved them."""

    __slots__ = ("adjust", "headers", "key_id", "reserved", "settled")

    def __init__(self, adjust: Adjust, key_id: str, reserved: int, headers: Headers) -> None:
        self.adjust = adjust
        self.key_id = key_id
        self.reserved = reserved
        self.headers = headers
        self.settled = False

    def settle(self, used: int) -> None:
        """Replaces the reservation by ``used`` tokens; later calls do nothing."""
        if self.settled:
            return
        self.settled = True
        used = _clamp(used)
        if self.reserved and used != self.reserved:
            self.adjust(self.key_id, used - self.reserved)


def _headers(kind: str, d: Decision) -> Headers:
    return [
        (f"x-ratelimit-limit-{kind}", str(d.limit)),
        (f"x-ratelimit-remaining-{kind}", str(d.remaining)),
        (f"x-ratelimit-reset-{kind}", _duration(d.reset_seconds)),
    ]


# --- a fleet: the same limits on a shared state server ---------------------------------------------

#: Seconds between reconnection attempts while the state server is unreachable.
PROBE_INTERVAL = 0.5
#: Settlements in flight at most; beyond, a refund is dropped (the key's state expires anyway).
MAX_SETTLING = 10_000


def state_unavailable() -> ApiError:
    return ApiError(
        503,
        "The shared rate-limit state is unreachable right now; retry shortly",
        code="state_unavailable",
        headers=[("retry-after", "1")],
    )


class SharedLimits(Limits):
    """The same limits, decided on the fleet's state server: a key's limit holds across every box.

    Each check is one round trip (:meth:`iir.store.state.StateStore.gcra`). While the server is
    unreachable, ``IIR_STATE_FAILURE=local`` decides with this box's in-process limiters (the
    outage is logged once, each such decision counted in ``iir_state_fallbacks_total``) and
    ``closed`` refuses with 503; a probe reconnects in the background, so requests never wait
    for a dead server's timeouts. A reservation is settled where it was made.
    """

    shared = True

    def __init__(self, settings: Settings, store: StateStore) -> None:
        super().__init__(settings)
        self.store = store
        self.fail_closed = settings.state_failure == "closed"
        self.down = False
        self._probe: asyncio.Task[None] | None = None
        self._settling: set[asyncio.Task[None]] = set()
        metrics.STATE_UP.set(1)

    async def start(self) -> None:
        from iir.store.state import StateUnavailable

        try:
            await self.store.ping()
        except StateUnavailable as exc:
            self._went_down(str(exc))

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self._settling:
            await asyncio.wait(set(self._settling), timeout=2)
        await self.store.close()

    # the decisions

    async def _decide(
        self, kind: str, limiter: RateLimiter, key: str, cost: int
    ) -> tuple[Decision, bool]:
        """(decision, whether the state server made it)."""
        if not self.down:
            from iir.store.state import StateUnavailable

            try:
                allowed, remaining, reset, retry = await self.store.gcra(
                    kind, key, limiter.per_minute, limiter.burst, cost
                )
                return Decision(allowed, limiter.per_minute, remaining, reset, retry), True
            except StateUnavailable as exc:
                self._went_down(str(exc))
        if self.fail_closed:
            raise state_unavailable()
        metrics.STATE_FALLBACKS.inc()
        return limiter.check(key, cost), False

    async def check_ip(self, client: str) -> None:
        if not self.per_ip.enabled:
            return
        decision, _ = await self._decide("ip", self.per_ip, self._ip_key(client), 1)
        if not decision.allowed:
            raise _refusal("ip", decision)

    async def check_key(self, key_id: str) -> Headers:
        if not self.key_requests.enabled:
            return []
        decision, _ = await self._decide("req", self.key_requests, key_id, 1)
        return _requests_headers(decision)

    async def reserve_tokens(self, key_id: str, tokens: int) -> Reservation:
        tokens = max(1, _clamp(tokens))
        if not self.key_tokens.enabled:
            return Reservation(self.key_tokens.adjust, key_id, 0, [])
        decision, shared = await self._decide("tok", self.key_tokens, key_id, tokens)
        adjust = self._settle_shared if shared else self.key_tokens.adjust
        return self._reservation(key_id, tokens, decision, adjust)

    def _settle_shared(self, key_id: str, delta: int) -> None:
        """Settles on the state server, without holding up the answer that is ending."""
        if len(self._settling) >= MAX_SETTLING:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._adjust(key_id, delta))
        except RuntimeError:  # no loop: the server is gone; so is the need to settle
            return
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _adjust(self, key_id: str, delta: int) -> None:
        from iir.store.state import StateUnavailable

        limiter = self.key_tokens
        # Unreachable: the reservation lapses with the key's expiry on the server.
        with contextlib.suppress(StateUnavailable):
            await self.store.gcra(
                "tok", key_id, limiter.per_minute, limiter.burst, delta, adjust=True
            )

    # outages

    def _went_down(self, why: str) -> None:
        if self.down:
            return
        self.down = True
        metrics.STATE_UP.set(0)
        log.warning(
            "state server unreachable; %s until it is back",
            "refusing requests (503)" if self.fail_closed else "limits are this box's own",
            extra={"event": "state_down", "reason": why},
        )
        try:
            self._probe = asyncio.get_running_loop().create_task(self._reconnect())
        except RuntimeError:
            self.down = False  # not serving yet: the next check tries the server again

    async def _reconnect(self) -> None:
        from iir.store.state import StateUnavailable

        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                await self.store.ping()
            except StateUnavailable:
                continue
            self.down = False
            metrics.STATE_UP.set(1)
            log.warning("state server reachable again", extra={"event": "state_up"})
            return


def build_limits(settings: Settings) -> Limits:
    """This box's limits, or the fleet's when ``IIR_STATE_URL`` is set."""
    if not settings.state_url:
        return Limits(settings)
    from iir.store.state import StateStore

    return SharedLimits(settings, StateStore(settings.state_url, settings.state_timeout))
