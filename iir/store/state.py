"""Limiter state shared by a fleet of boxes, on Redis or Valkey (``IIR_STATE_URL``).

Every check is one atomic round trip: a GCRA Lua script (the same algorithm as the in-process
limiter in ``native/src/ratelimit.rs``) reads the key's theoretical arrival time, decides, and
writes it back with an expiry, all inside the server, so boxes racing for the same key can never
admit more than one box alone would. The script is loaded once per server (``SCRIPT LOAD``) and
called by its digest (``EVALSHA``); a server that forgot it (restarted, ``SCRIPT FLUSH``) answers
``NOSCRIPT`` and gets it again (redis-py's ``Script`` does both).

Time comes from the state server's clock (``TIME``), never the boxes': the boxes' clocks may
disagree, the server's is one. The ``redis`` package is imported only when this store is built, so
a single box runs without it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

#: KEYS[1] the limiter key; ARGV: microseconds per unit, microseconds of credit a full bucket
#: holds (burst x interval), units (a refund is negative), mode ("c" check, "a" adjust).
#: Returns {allowed 0|1, remaining units, reset µs, retry-after µs}.
GCRA = """
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new = tat + cost * interval
if ARGV[4] == 'a' then
  if new <= now then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], string.format('%.17g', new), 'PX', math.ceil((new - now) / 1000))
  end
  return {1, 0, 0, 0}
end
local used = new - now
local eps = interval * 1e-9
if used <= capacity + eps then
  if used > 0 then
    redis.call('SET', KEYS[1], string.format('%.17g', new), 'PX', math.ceil(used / 1000))
  end
  return {1, math.max(0, math.floor((capacity - used + eps) / interval)), math.floor(used), 0}
end
local held = tat - now
return {0, math.max(0, math.floor((capacity - held + eps) / interval)), math.floor(held),
        math.floor(used - capacity)}
"""

PREFIX = "iir:rl:"


class StateUnavailable(Exception):
    """The state server cannot be reached or did not answer in time."""


def redacted(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + host).geturl()


class StateStore:
    """A pooled asyncio client for one Redis/Valkey server, and the GCRA script on it."""

    def __init__(self, url: str, timeout: float = 0.5) -> None:
        import redis.asyncio as aioredis  # the fleet extra: imported only when configured
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        # No retries inside the client: a failed round trip falls back (or answers 503) at once,
        # and reconnecting is the caller's probe's job, not every request's.
        self._redis: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=256,
            health_check_interval=30,
        )
        self._script: Any = self._redis.register_script(GCRA)
        import redis.exceptions

        # Whatever goes wrong (refused, timed out, loading, a read-only replica, out of memory)
        # means the same here: no decision from the server this time.
        self._errors: tuple[type[BaseException], ...] = (
            redis.exceptions.RedisError,
            TimeoutError,
            OSError,
        )

    async def gcra(
        self, kind: str, key: str, per_minute: int, burst: int, cost: int, adjust: bool = False
    ) -> tuple[bool, int, float, float]:
        """One atomic check (or adjustment): (allowed, remaining, reset s, retry-after s)."""
        interval = 60e6 / per_minute
        try:
            out = await self._script(
                keys=[f"{PREFIX}{kind}:{key}"],
                args=[repr(interval), repr(burst * interval), cost, "a" if adjust else "c"],
            )
        except self._errors as exc:
            raise StateUnavailable(type(exc).__name__) from None
        allowed, remaining, reset_us, retry_us = (int(v) for v in out)
        return bool(allowed), remaining, reset_us / 1e6, retry_us / 1e6

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except self._errors as exc:
            raise StateUnavailable(type(exc).__name__) from None

    async def close(self) -> None:
        await self._redis.aclose()
