"""GCRA limiter bounds, driven by an injected clock; client address helpers."""

from __future__ import annotations

import asyncio
import ipaddress
import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iir.core.errors import ApiError
from iir.core.settings import load_settings, parse_trusted_proxies
from iir.policy.limits import Limits
from iir.policy.ratelimit import Decision, RateLimiter, client_ip, ip_key


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=300, deadline=None)
@given(
    per_minute=st.integers(1, 120),
    burst=st.integers(1, 50),
    events=st.lists(
        st.tuples(st.floats(0, 5, allow_nan=False), st.integers(1, 5), st.booleans()),
        max_size=300,
    ),
)
def test_never_more_than_limit_plus_burst_in_any_window(
    per_minute: int, burst: int, events: list[tuple[float, int, bool]]
) -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute, burst, clock=clock)
    admitted: list[tuple[float, int]] = []
    for dt, cost, refund in events:
        clock.now += dt
        d = limiter.check("k", cost)
        if d.allowed:
            admitted.append((clock.now, cost))
            assert d.retry_after_seconds == 0
            assert 0 <= d.remaining <= burst
        else:
            assert d.retry_after_seconds > 0
        if refund and d.allowed:
            # A refund of what was just charged cannot raise the bound either.
            limiter.adjust("k", -cost)
            admitted.pop()
    for i, (start, _) in enumerate(admitted):
        in_window = sum(c for t, c in admitted[i:] if t < start + 60.0)
        assert in_window <= per_minute + burst


def test_retry_after_is_exact() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, 2, clock=clock)
    assert limiter.check("a").allowed
    assert limiter.check("a").allowed
    d = limiter.check("a")
    assert not d.allowed
    assert d.retry_after_seconds == pytest.approx(1.0)
    assert d.remaining == 0 and d.limit == 60
    clock.now += d.retry_after_seconds
    assert limiter.check("a").allowed


def test_decision_fields_and_value_semantics() -> None:
    clock = FakeClock()
    d = RateLimiter(600, clock=clock).check("k", 10)
    assert (d.allowed, d.limit, d.remaining, d.retry_after_seconds) == (True, 600, 590, 0.0)
    assert d == Decision(True, 600, 590, d.reset_seconds, 0.0)
    assert d.reset_seconds == pytest.approx(1.0)
    assert "allowed=True" in repr(d)
    with pytest.raises(AttributeError):
        d.allowed = False  # type: ignore[misc]
    assert Decision(True, 1, 0, 0.5, 0.0) == Decision(True, 1, 0, 0.5, 0.0)
    assert hash(Decision(True, 1, 0, 0.5, 0.0)) == hash(Decision(True, 1, 0, 0.5, 0.0))


def test_keys_are_independent() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 1, clock=clock)
    assert limiter.check("a").allowed
    assert not limiter.check("a").allowed
    assert limiter.check("b").allowed


def test_token_reservation_reconciled() -> None:
    clock = FakeClock()
    tpm = RateLimiter(1000, clock=clock)
    assert tpm.check("key", 900).allowed  # reserve prompt + max_tokens
    assert not tpm.check("key", 200).allowed
    tpm.adjust("key", -500)  # actual usage was 400
    assert tpm.check("key", 200).allowed
    tpm.adjust("key", 10_000)  # more than reserved: the key must wait
    d = tpm.check("key", 1)
    assert not d.allowed and d.retry_after_seconds > 60


@pytest.mark.parametrize("tokens", [2**63, 2**64 + 5, 10**30])
def test_token_costs_beyond_64_bits_are_clamped(tokens: int) -> None:
    """A cost the limiter's 64-bit integers cannot hold is refused as too large, not a crash;
    settling such a reservation is harmless too."""
    limits = Limits(load_settings({"IIR_API_KEY": "k" * 32, "IIR_RATE_LIMIT_TPM_PER_KEY": "1000"}))
    with pytest.raises(ApiError) as err:
        asyncio.run(limits.reserve_tokens("key", tokens))
    assert err.value.status == 429 and "Request too large" in err.value.message
    reservation = asyncio.run(limits.reserve_tokens("key", 10))
    reservation.settle(tokens)  # far more used than reserved: the key waits, nothing overflows
    with pytest.raises(ApiError):
        asyncio.run(limits.reserve_tokens("key", 10))


def test_cost_above_burst_is_refused_with_finite_retry() -> None:
    clock = FakeClock()
    d = RateLimiter(100, 10, clock=clock).check("k", 11)
    assert not d.allowed
    assert math.isfinite(d.retry_after_seconds)


def test_disabled_limiter_always_allows() -> None:
    limiter = RateLimiter(0)
    assert not limiter.enabled
    assert all(limiter.check("k", 10**6).allowed for _ in range(1000))
    assert len(limiter) == 0


def test_memory_is_bounded_and_idle_keys_expire() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, 5, max_keys=1000, clock=clock)
    for i in range(50_000):
        limiter.check(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) <= 1000 + 15
    clock.now += 3600
    limiter.sweep()
    assert len(limiter) == 0


def test_real_clock_by_default() -> None:
    limiter = RateLimiter(60, 1)
    assert limiter.check("k").allowed
    assert not limiter.check("k").allowed


def test_thread_safety_never_over_admits() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 100, clock=clock)
    allowed: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        local = [limiter.check("shared").allowed for _ in range(500)]
        with lock:
            allowed.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 100


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"per_minute": -1}, ValueError),
        ({"per_minute": 10, "burst": 0}, ValueError),
        ({"per_minute": 10, "max_keys": 0}, ValueError),
        ({"per_minute": "10"}, TypeError),
        ({"per_minute": 1.5}, TypeError),
    ],
)
def test_bad_configuration(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        RateLimiter(**kwargs)  # type: ignore[arg-type]


def test_bad_arguments() -> None:
    limiter = RateLimiter(10, clock=lambda: float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        limiter.check("k")
    with pytest.raises(ValueError, match="cost"):
        RateLimiter(10).check("k", -1)
    with pytest.raises(TypeError):
        RateLimiter(10).check(None)  # type: ignore[arg-type]


TRUSTED = parse_trusted_proxies("10.0.0.0/8, 192.168.1.1 ,fd00::/8")


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.5", "1.2.3.4", "203.0.113.5"),  # untrusted peer: header ignored
        ("10.1.2.3", "1.2.3.4", "1.2.3.4"),
        ("10.1.2.3", "6.6.6.6, 1.2.3.4, 10.9.9.9", "1.2.3.4"),  # skip trusted hops right-to-left
        ("10.1.2.3", "10.0.0.1, 10.0.0.2", "10.0.0.1"),  # all trusted: the leftmost
        ("10.1.2.3", "garbage, 1.2.3.4", "1.2.3.4"),
        ("10.1.2.3", "1.2.3.4, garbage", "10.1.2.3"),  # malformed hop stops the walk
        ("10.1.2.3", None, "10.1.2.3"),
        ("192.168.1.1", " 2001:db8::1 ", "2001:db8::1"),
        ("[fd00::5]:443", "[2001:db8::7]:1234", "2001:db8::7"),
        ("::ffff:10.0.0.1", "5.6.7.8", "5.6.7.8"),
        ("unix:/run/sock", "1.2.3.4", "unix:/run/sock"),
    ],
)
def test_client_ip(peer: str, xff: str | None, expected: str) -> None:
    assert client_ip(peer, xff, TRUSTED) == expected


def test_client_ip_without_trusted_proxies_ignores_header() -> None:
    assert client_ip("10.1.2.3", "1.2.3.4", []) == "10.1.2.3"


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_ip_key(ip: str, key: str) -> None:
    assert ip_key(ip) == key


def test_parse_trusted_proxies() -> None:
    assert parse_trusted_proxies("") == ()
    assert parse_trusted_proxies("127.0.0.1") == (ipaddress.ip_network("127.0.0.1/32"),)
    with pytest.raises(ValueError, match=r"invalid trusted proxy '10\.0\.0\.0/33'"):
        parse_trusted_proxies("10.0.0.1, 10.0.0.0/33")
    with pytest.raises(ValueError, match=r"invalid trusted proxy 'proxy\.local'"):
        parse_trusted_proxies("proxy.local")
