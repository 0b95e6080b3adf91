"""Rate limiting: keyed GCRA limiters (in Rust) and client address helpers.

A limiter admits ``per_minute`` units per minute with bursts of up to ``burst`` units, so in
any window of a minute it never admits more than ``per_minute + burst``. Memory is bounded:
idle keys are dropped (their state equals a fresh key's) and at most ``max_keys`` are held.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from iir import _native
from iir.core.settings import IPNetwork

#: The outcome of one check: ``allowed``, ``limit``, ``remaining``, ``reset_seconds``,
#: ``retry_after_seconds``. Immutable and compared by value, like a frozen dataclass, but built
#: in Rust: a frozen dataclass alone costs about 1 µs to construct.
Decision = _native.Decision


class RateLimiter:
    """Keyed GCRA limiter; thread-safe. ``per_minute == 0`` disables it (every check allows).

    ``clock`` (seconds, monotonic) is for tests; by default a monotonic clock in Rust is used.
    """

    __slots__ = ("_clock", "_inner", "adjust", "check")

    #: ``check(key, cost=1) -> Decision``: admit ``cost`` units for ``key`` or refuse.
    check: Callable[..., Decision]
    #: ``adjust(key, delta)``: charge (positive) or refund (negative) units, e.g. to reconcile
    #: a token reservation with the actual usage.
    adjust: Callable[..., None]

    def __init__(
        self,
        per_minute: int,
        burst: int | None = None,
        max_keys: int = 100_000,
        clock: Callable[[], float] | None = None,
    ) -> None:
        for name, value in (("per_minute", per_minute), ("burst", burst), ("max_keys", max_keys)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{name} must be an integer, got {value!r}")
        self._inner = _native.RateLimiter(per_minute, burst, max_keys)
        self._clock = clock
        if clock is None:
            self.check = self._inner.check
            self.adjust = self._inner.adjust
        else:
            self.check = self._check_with_clock
            self.adjust = self._adjust_with_clock

    def _check_with_clock(self, key: str, cost: int = 1) -> Decision:
        assert self._clock is not None
        return self._inner.check(key, cost, float(self._clock()))

    def _adjust_with_clock(self, key: str, delta: int) -> None:
        assert self._clock is not None
        self._inner.adjust(key, delta, float(self._clock()))

    @property
    def enabled(self) -> bool:
        """False when ``per_minute`` is 0: every check allows."""
        return self._inner.enabled

    @property
    def per_minute(self) -> int:
        return self._inner.per_minute

    @property
    def burst(self) -> int:
        return self._inner.burst

    def sweep(self) -> None:
        """Drop idle keys now (they are also dropped whenever room is needed)."""
        if self._clock is None:
            self._inner.sweep()
        else:
            self._inner.sweep(float(self._clock()))

    def __len__(self) -> int:
        return len(self._inner)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[v6]:port"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "v4:port"
        text = text.split(":", 1)[0]
    text = text.split("%", 1)[0]  # zone id
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _trusted(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, proxies: Sequence[IPNetwork]
) -> bool:
    return any(ip.version == net.version and ip in net for net in proxies)


def client_ip(peer: str, forwarded_for: str | None, trusted_proxies: Sequence[IPNetwork]) -> str:
    """The client's address: the socket peer, unless the peer is a trusted proxy.

    Behind trusted proxies, ``X-Forwarded-For`` is walked right to left, skipping trusted hops;
    the first untrusted address is the client. A malformed hop stops the walk there (the last
    trusted hop is then the client), so a forged header cannot pick an arbitrary address.
    """
    peer_ip = _parse_ip(peer)
    if peer_ip is None:
        return peer
    if not forwarded_for or not trusted_proxies or not _trusted(peer_ip, trusted_proxies):
        return str(peer_ip)
    client = peer_ip
    for hop in reversed(forwarded_for.split(",")):
        hop_ip = _parse_ip(hop)
        if hop_ip is None:
            break
        client = hop_ip
        if not _trusted(hop_ip, trusted_proxies):
            break
    return str(client)


def ip_key(ip: str) -> str:
    """Rate-limit key of an address: IPv4 as is, IPv6 grouped by its /64 network.

    A string that is not an address is returned unchanged (it still works as a key).
    """
    parsed = _parse_ip(ip)
    if parsed is None:
        return ip
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)
