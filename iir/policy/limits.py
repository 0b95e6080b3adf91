"""The request limits: per client IP, and per API key in requests and tokens per minute, and
the requests each key and each address may have in flight at once.

Each rate limit is a GCRA limiter in Rust (:mod:`iir.policy.ratelimit`); this module decides the
keys, turns refusals into 429 answers with ``Retry-After``, and builds OpenAI's
``x-ratelimit-*`` headers. Rates bound how often a client may ask; the in-flight caps bound how
much it may hold at once (slow streams, long polls, bodies that trickle), which a rate alone
does not.
"""

from __future__ import annotations

import math

from iir.core.errors import ApiError
from iir.core.settings import Settings
from iir.ops import metrics
from iir.policy.ratelimit import Decision, RateLimiter, client_ip, ip_key

Headers = list[tuple[str, str]]


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

    def check_ip(self, client: str) -> None:
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

    def check_key(self, key_id: str) -> Headers:
        """Admits one request for the key; returns the ``x-ratelimit-*-requests`` headers."""
        if not self.key_requests.enabled:
            return []
        decision = self.key_requests.check(key_id)
        if not decision.allowed:
            err = _refusal("key_requests", decision)
            err.headers += _headers("requests", decision)
            raise err
        return _headers("requests", decision)

    def reserve_tokens(self, key_id: str, tokens: int) -> Reservation:
        """Reserves prompt + max output tokens at admission; the caller settles it once the
        answer's real size is known (success, failure or cancellation alike)."""
        tokens = max(1, tokens)
        if not self.key_tokens.enabled:
            return Reservation(self, key_id, 0, [])
        decision = self.key_tokens.check(key_id, max(1, tokens))
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
        return Reservation(self, key_id, tokens, _headers("tokens", decision))


class Reservation:
    """Tokens reserved for one request; :meth:`settle` gives back what was not used, once."""

    __slots__ = ("headers", "key_id", "limits", "reserved", "settled")

    def __init__(self, limits: Limits, key_id: str, reserved: int, headers: Headers) -> None:
        self.limits = limits
        self.key_id = key_id
        self.reserved = reserved
        self.headers = headers
        self.settled = False

    def settle(self, used: int) -> None:
        """Replaces the reservation by ``used`` tokens; later calls do nothing."""
        if self.settled:
            return
        self.settled = True
        if self.reserved and used != self.reserved:
            self.limits.key_tokens.adjust(self.key_id, max(0, used) - self.reserved)


def _headers(kind: str, d: Decision) -> Headers:
    return [
        (f"x-ratelimit-limit-{kind}", str(d.limit)),
        (f"x-ratelimit-remaining-{kind}", str(d.remaining)),
        (f"x-ratelimit-reset-{kind}", _duration(d.reset_seconds)),
    ]
