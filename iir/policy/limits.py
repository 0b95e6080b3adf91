"""The request limits: per client IP, and per API key in requests and tokens per minute.

Each limit is a GCRA limiter in Rust (:mod:`iir.policy.ratelimit`); this module decides the keys, turns
refusals into 429 answers with ``Retry-After``, and builds OpenAI's ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import math

from iir.core.errors import ApiError
from iir.core.settings import Settings
from iir.ops import metrics
from iir.policy.ratelimit import Decision, RateLimiter, client_ip, ip_key

Headers = list[tuple[str, str]]

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


class Limits:
    def __init__(self, settings: Settings) -> None:
        self.per_ip = RateLimiter(settings.rate_limit_per_ip)
        self.key_requests = RateLimiter(settings.rate_limit_rpm_per_key)
        self.key_tokens = RateLimiter(settings.rate_limit_tpm_per_key)
        self.trusted = settings.trusted_proxies
        self._ip_keys: dict[str, str] = {}

    def client(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address (X-Forwarded-For only from trusted proxies)."""
        return client_ip(peer, forwarded_for, self.trusted) if self.trusted else peer

    def check_ip(self, client: str) -> None:
        if not self.per_ip.enabled:
            return
        key = self._ip_keys.get(client)
        if key is None:
            if len(self._ip_keys) > 10_000:
                self._ip_keys.clear()  # a cache, not state: bounded however many clients come
            key = self._ip_keys[client] = ip_key(client)
        decision = self.per_ip.check(key)
        if not decision.allowed:
            raise _refusal("ip", decision)

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
        tokens = max(1, _clamp(tokens))
        if not self.key_tokens.enabled:
            return Reservation(self, key_id, 0, [])
        decision = self.key_tokens.check(key_id, tokens)
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
        used = _clamp(used)
        if self.reserved and used != self.reserved:
            self.limits.key_tokens.adjust(self.key_id, used - self.reserved)


def _headers(kind: str, d: Decision) -> Headers:
    return [
        (f"x-ratelimit-limit-{kind}", str(d.limit)),
        (f"x-ratelimit-remaining-{kind}", str(d.remaining)),
        (f"x-ratelimit-reset-{kind}", _duration(d.reset_seconds)),
    ]
