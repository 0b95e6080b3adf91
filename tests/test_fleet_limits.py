"""Shared limits (``IIR_STATE_URL``) against a real ``redis-server``: two limiters stand for two
boxes; the server is killed and flushed for real. The fleet of real ``iir serve`` processes is in
tests/test_fleet.py."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from iir.core.errors import ApiError
from iir.core.settings import load_settings
from iir.ops import metrics
from iir.policy.limits import Limits, SharedLimits, build_limits
from iir.store.state import StateStore, redacted

from .fleet_servers import RedisServer, redis_server
from .harness import REPO


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as srv:
        yield srv


def settings(url: str, **env: str) -> Any:
    return load_settings({"IIR_API_KEY": "k" * 16, "IIR_STATE_URL": url, **env})


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def admitted(limits: Limits, key: str, n: int) -> int:
    ok = 0
    for _ in range(n):
        try:
            await limits.check_key(key)
            ok += 1
        except ApiError as err:
            assert err.status == 429
    return ok


def test_a_key_limit_holds_across_two_boxes(redis: RedisServer) -> None:
    async def go() -> None:
        env = {"IIR_RATE_LIMIT_RPM_PER_KEY": "10"}
        a, b = build_limits(settings(redis.url, **env)), build_limits(settings(redis.url, **env))
        assert isinstance(a, SharedLimits) and isinstance(b, SharedLimits)
        # Interleaved, as two boxes serving one client would be: 10 a minute, burst 10.
        results = await asyncio.gather(*(admitted(x, "key-across", 8) for x in (a, b, a, b)))
        assert sum(results) == 10, results
        for x in (a, b):
            await x.close()

    run(go())


def test_same_headers_and_refusal_as_the_in_process_limits(redis: RedisServer) -> None:
    async def go() -> None:
        env = {"IIR_RATE_LIMIT_RPM_PER_KEY": "3"}
        shared = build_limits(settings(redis.url, **env))
        local = Limits(settings(redis.url, **env))
        for _ in range(3):
            got = await shared.check_key("key-headers")
            want = await local.check_key("key-headers")
            assert [h for h, _ in got] == [h for h, _ in want]
            assert dict(got)["x-ratelimit-limit-requests"] == "3"
            assert (
                dict(got)["x-ratelimit-remaining-requests"]
                == dict(want)["x-ratelimit-remaining-requests"]
            )
        refusals = []
        for limits in (shared, local):
            with pytest.raises(ApiError) as caught:
                await limits.check_key("key-headers")
            refusals.append(caught.value)
        assert [e.status for e in refusals] == [429, 429]
        assert [e.code for e in refusals] == ["rate_limit_exceeded"] * 2
        assert sorted(dict(refusals[0].headers)) == sorted(dict(refusals[1].headers))
        assert int(dict(refusals[0].headers)["retry-after"]) >= 1
        await shared.close()

    run(go())


def test_a_reservation_is_settled_on_the_state_server(redis: RedisServer) -> None:
    async def go() -> None:
        env = {"IIR_RATE_LIMIT_TPM_PER_KEY": "1000"}
        a, b = build_limits(settings(redis.url, **env)), build_limits(settings(redis.url, **env))
        assert isinstance(a, SharedLimits)
        held = await a.reserve_tokens("key-tokens", 900)
        assert dict(held.headers)["x-ratelimit-remaining-tokens"] == "100"
        with pytest.raises(ApiError) as caught:  # box B sees box A's reservation
            await b.reserve_tokens("key-tokens", 500)
        assert caught.value.status == 429
        held.settle(100)  # the answer used 100: 800 go back, on the same server
        await asyncio.wait(set(a._settling))
        again = await b.reserve_tokens("key-tokens", 500)
        assert 300 <= int(dict(again.headers)["x-ratelimit-remaining-tokens"]) <= 400
        held.settle(0)  # settled once only
        assert not a._settling
        for x in (a, b):
            await x.close()

    run(go())


def test_a_forgotten_script_is_loaded_again(redis: RedisServer) -> None:
    async def go() -> None:
        store = StateStore(redis.url)
        first = await store.gcra("req", "key-noscript", 60, 60, 1)
        subprocess.run(
            ["redis-cli", "-p", str(redis.port), "SCRIPT", "FLUSH"], check=True, capture_output=True
        )
        second = await store.gcra("req", "key-noscript", 60, 60, 1)
        assert first[1] == 59 and second[1] == 58  # NOSCRIPT answered by loading it again
        await store.close()

    run(go())


def test_outage_falls_back_to_local_logged_once_and_reconnects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def go(srv: RedisServer) -> None:
        limits = build_limits(settings(srv.url, IIR_RATE_LIMIT_RPM_PER_KEY="1000"))
        assert isinstance(limits, SharedLimits)
        await limits.start()
        await limits.check_key("key-outage")
        before = metrics.STATE_FALLBACKS._value.get()
        srv.kill()
        for _ in range(5):  # answered by this box's own limiter, no error, no wait
            headers = await limits.check_key("key-outage")
            assert dict(headers)["x-ratelimit-limit-requests"] == "1000"
        assert limits.down
        assert metrics.STATE_FALLBACKS._value.get() - before == 5
        assert metrics.STATE_UP._value.get() == 0
        downs = [r for r in caplog.records if getattr(r, "event", None) == "state_down"]
        assert len(downs) == 1
        srv.start()
        for _ in range(100):
            if not limits.down:
                break
            await asyncio.sleep(0.1)
        assert not limits.down and metrics.STATE_UP._value.get() == 1
        await limits.check_key("key-outage")
        assert metrics.STATE_FALLBACKS._value.get() - before == 5  # shared again
        await limits.close()

    caplog.set_level(logging.WARNING, logger="iir.policy.limits")
    with redis_server() as srv:
        run(go(srv))


def test_outage_fails_closed_when_configured() -> None:
    async def go(srv: RedisServer) -> None:
        limits = build_limits(
            settings(srv.url, IIR_RATE_LIMIT_PER_IP="100", IIR_STATE_FAILURE="closed")
        )
        await limits.check_ip("192.0.2.1")
        srv.kill()
        for _ in range(3):
            with pytest.raises(ApiError) as caught:
                await limits.check_ip("192.0.2.1")
            assert caught.value.status == 503
            assert caught.value.code == "state_unavailable"
            assert dict(caught.value.headers)["retry-after"] == "1"
        await limits.close()

    with redis_server() as srv:
        run(go(srv))


def test_a_single_box_imports_no_fleet_client(tmp_path: Any) -> None:
    code = (
        "import sys; from iir.api.services import build; from iir.core.settings import "
        "load_settings; svc = build(load_settings({'IIR_API_KEY': 'k' * 16, "
        "'IIR_DATA_DIR': sys.argv[1]})); "
        "print(type(svc.limits).__name__, sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('redis', 'psycopg', 'psycopg_pool')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert out.stdout.split(None, 1) == ["Limits", "[]\n"]


def test_settings_name_a_bad_url_without_printing_it() -> None:
    from iir.core.settings import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_settings({"IIR_API_KEY": "k" * 16, "IIR_STATE_URL": "http://u:hunter2hunter2@x"})
    assert "IIR_STATE_URL" in str(caught.value) and "hunter2" not in str(caught.value)
    assert redacted("redis://u:hunter2@h:1/0") == "redis://u:***@h:1/0"
