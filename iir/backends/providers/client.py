"""Talking to a remote provider without letting it hurt IIR: the resilience policy in one place.

One :class:`Upstream` per provider owns a pooled aiohttp session (aiohttp won the measurement in
``bench/bench_upstream_client.py``; see README), a :class:`CircuitBreaker`, and the rules:

- timeouts: connect, first byte (response headers), idle (between two reads of a body or stream);
- retries with jittered exponential back-off for connection errors, 429 (``Retry-After`` honoured)
  and 5xx, only while nothing has been handed on (for streams: before the first event), at most
  ``IIR_UPSTREAM_RETRIES`` times; timeouts are not retried (a provider that did not answer in
  time rarely answers the same request faster, and the client is already waiting);
- error mapping: other 4xx relayed with their status and message, 5xx or connection failure after
  the retries → 502, timeout → 504, open circuit → 503;
- bounds: no answer is read past ``IIR_UPSTREAM_MAX_BYTES`` (counted after decompression, which
  aiohttp does a bounded piece at a time, so a gzip bomb never inflates), no SSE line past
  :data:`MAX_SSE_LINE` (or the body cap if lower), and no redirect is ever followed (it would
  carry the provider's key to another host).

Provider keys travel only in request headers, which are never logged nor put into errors.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import orjson

from iir.core.errors import ApiError
from iir.core.settings import UpstreamSettings
from iir.ops import metrics, overhead

log = logging.getLogger("iir.backends.providers.client")

CLOSED, OPEN, HALF_OPEN = 0, 1, 2

#: The longest SSE line read from a provider (a whole event's ``data`` is usually one line).
MAX_SSE_LINE = 1024 * 1024
#: How much of an error answer is read for its message; the rest is dropped, not an error.
_ERROR_BODY_BYTES = 64 * 1024


class TooLarge(Exception):
    """An upstream answer (or one of its SSE lines) over its cap."""


class CircuitBreaker:
    """Rolling-window failure rate per provider: closed → open (fail fast) → half-open (one probe)."""

    def __init__(
        self,
        provider: str,
        window: float,
        min_requests: int,
        failure_rate: float,
        open_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.clock = clock
        self.window = window
        self.min_requests = min_requests
        self.failure_rate = failure_rate
        self.open_seconds = open_seconds
        self.state = CLOSED
        self._events: deque[tuple[float, bool]] = deque()
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        metrics.CIRCUIT_STATE.labels(provider).set(CLOSED)

    @property
    def state_name(self) -> str:
        return ("closed", "open", "half_open")[self.state]

    def _set(self, state: int) -> None:
        if state != self.state:
            log.warning(
                "circuit %s",
                ("closed", "open", "half-open")[state],
                extra={"provider": self.provider, "event": "circuit"},
            )
        self.state = state
        metrics.CIRCUIT_STATE.labels(self.provider).set(state)

    def routing_state(self) -> str:
        """closed | open | half_open as routing should see it: an open circuit whose wait is over
        lets a probe through, so it counts as half-open."""
        if self.state == OPEN and time.monotonic() - self._opened_at >= self.open_seconds:
            return "half_open"
        return ("closed", "open", "half_open")[self.state]

    def check(self) -> None:
        """Lets an attempt through, or raises 503 while the circuit is open."""
        if self.state == CLOSED:
            return
        now = self.clock()
        if self.state == OPEN and now - self._opened_at >= self.open_seconds:
            self._set(HALF_OPEN)
        if self.state == HALF_OPEN and not self._probing:
            self._probing = True
            return
        wait = max(1, round(self.open_seconds - (now - self._opened_at)))
        raise ApiError(
            503,
            f"Provider {self.provider} is failing; its circuit is open, retry in about {wait} s",
            code="circuit_open",
            headers=[("retry-after", str(wait))],
        )

    def record(self, ok: bool | None) -> None:
        """Outcome of an attempt: True healthy, False failure, None says nothing (cancelled)."""
        if self.state == HALF_OPEN and self._probing:
            self._probing = False
            if ok is None:
                return
            if ok:
                self._events.clear()
                self._failures = 0
                self._set(CLOSED)
            else:
                self._opened_at = self.clock()
                self._set(OPEN)
            return
        if ok is None or self.state != CLOSED:
            return
        now = self.clock()
        self._events.append((now, ok))
        if not ok:
            self._failures += 1
        while self._events and now - self._events[0][0] > self.window:
            _, was_ok = self._events.popleft()
            if not was_ok:
                self._failures -= 1
        total = len(self._events)
        if total >= self.min_requests and self._failures / total >= self.failure_rate:
            self._opened_at = now
            self._events.clear()
            self._failures = 0
            self._set(OPEN)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def upstream_message(raw: bytes) -> str:
    """The human message of a provider's error body (OpenAI and Anthropic shapes, or raw text)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace").strip()
        return text[:300] or "no message"
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            for key in ("message", "detail", "msg"):
                if isinstance(err.get(key), str):
                    return str(err[key])[:1000]
        if isinstance(err, str):
            return err[:1000]
        if isinstance(body.get("detail"), str):
            return str(body["detail"])[:1000]
    return raw.decode("utf-8", "replace")[:300]


class _Retry(Exception):
    """An attempt that failed in a way worth trying again; carries the error to raise if not."""

    def __init__(self, error: ApiError, delay: float | None = None) -> None:
        self.error = error
        self.delay = delay


class Upstream:
    """The pooled client, breaker and retry policy of one provider."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        headers: Mapping[str, str],
        settings: UpstreamSettings,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.headers = {"content-type": "application/json", **headers}
        self.settings = settings
        self.secrets = tuple(s for s in secrets if s)
        self.breaker = CircuitBreaker(
            provider,
            settings.breaker_window,
            settings.breaker_min_requests,
            settings.breaker_failure_rate,
            settings.breaker_open_seconds,
        )
        self._session: aiohttp.ClientSession | None = None
        # Moving average of the time to the first byte (whole answer when not streamed), read by
        # routing to prefer the faster of two equal choices.
        self.recent_latency: float | None = None
        # metric children resolved once: a label lookup per request is measurable on this path
        self._latency = metrics.UPSTREAM_LATENCY.labels(provider)
        self._ttft = metrics.UPSTREAM_TTFT.labels(provider)
        self._counters: dict[str, Any] = {}
        # A non-streamed answer must arrive whole within the first-byte timeout: a per-read
        # timer alone would let a provider trickle a byte at a time for ever.
        self._json_timeout = aiohttp.ClientTimeout(
            total=settings.connect_timeout + settings.first_byte_timeout,
            sock_connect=settings.connect_timeout,
            sock_read=settings.first_byte_timeout,
        )
        self.max_bytes = settings.max_bytes
        self.max_line = min(MAX_SSE_LINE, settings.max_bytes)

    def _note_latency(self, seconds: float) -> None:
        prev = self.recent_latency
        self.recent_latency = seconds if prev is None else prev + 0.2 * (seconds - prev)

    # --- the pooled client ------------------------------------------------------------------------

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.settings.connect_timeout
                ),
                headers=self.headers,
                auto_decompress=True,
                raise_for_status=False,
            )
        return self._session

    def _count(self, status: str) -> None:
        counter = self._counters.get(status)
        if counter is None:
            counter = self._counters[status] = metrics.UPSTREAM_REQUESTS.labels(
                self.provider, status
            )
        counter.inc()

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    # --- error shaping ------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "[redacted]")
        return text

    def _failed(self, why: str) -> ApiError:
        return ApiError(502, self._scrub(f"Upstream provider error: {self.provider}: {why}"))

    def _too_large(self) -> ApiError:
        return self._failed(
            f"the answer is larger than {self.max_bytes} bytes (IIR_UPSTREAM_MAX_BYTES)"
        )

    def _line_too_long(self) -> ApiError:
        return self._failed(f"a line of the event stream is longer than {self.max_line} bytes")

    def _timeout(self, what: str) -> ApiError:
        return ApiError(
            504, f"Upstream provider timeout: {self.provider} {what}", code="upstream_timeout"
        )

    def _status_error(self, status: int, raw: bytes, headers: Mapping[str, str]) -> _Retry:
        """Turns a non-2xx answer into the error to raise; retryable ones come wrapped."""
        msg = self._scrub(upstream_message(raw))
        if status < 400:  # redirects are not followed: a provider API does not move per request
            raise self._failed(f"unexpected HTTP {status} (redirects are not followed)")
        if status == 429:
            wait = _retry_after(headers.get("retry-after"))
            extra = [("retry-after", headers["retry-after"])] if headers.get("retry-after") else []
            err = ApiError(
                429, f"{self.provider}: {msg}", code="upstream_rate_limited", headers=extra
            )
            return _Retry(err, wait)
        if status >= 500:
            return _Retry(self._failed(f"HTTP {status}: {msg}"))
        err = ApiError(status, f"{self.provider}: {msg}", code="upstream_error")
        raise err

    def _backoff(self, attempt: int, hint: float | None) -> float | None:
        """Seconds to wait before retry ``attempt`` (1-based), or None to give up now."""
        if attempt > self.settings.retries:
            return None
        base = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** (attempt - 1))
        delay = random.uniform(base / 2, base)
        if hint is not None:
            if hint > max(self.settings.backoff_max, self.settings.first_byte_timeout):
                return None  # the provider asks for a longer pause than a client will wait
            delay = max(delay, hint)
        return delay

    # --- requests -----------------------------------------------------------------------------

    async def post_json(
        self, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> Any:
        """POSTs ``body`` and returns the decoded JSON answer, retrying per the policy.
        ``headers`` are added to the provider's own for this request."""
        attempt = 0
        while True:
            self.breaker.check()
            t0 = time.perf_counter()
            try:
                result = await self._json_once(path, body, headers)
            except _Retry as retry:
                overhead.add_wait(time.perf_counter() - t0)
                self.breaker.record(None if retry.error.status == 429 else False)
                attempt += 1
                await self._wait_before_retry(attempt, retry)
                continue
            except ApiError as err:
                overhead.add_wait(time.perf_counter() - t0)
                # a relayed 4xx says the provider is up; a timeout or a bad answer says it is not
                self.breaker.record(err.status < 500)
                raise
            except BaseException:
                self.breaker.record(None)
                raise
            overhead.add_wait(time.perf_counter() - t0)
            self.breaker.record(True)
            return result

    async def _json_once(
        self, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> Any:
        t0 = time.perf_counter()
        status = "connect_error"
        try:
            # aiohttp's own read timer (cheaper than asyncio.timeout): the whole answer of a
            # non-streamed request is its first byte, so the first-byte timeout bounds each read
            async with self.session().post(
                self.base_url + path,
                data=body,
                headers=headers,
                timeout=self._json_timeout,
                allow_redirects=False,
            ) as resp:
                status = str(resp.status)
                if resp.status >= 300:
                    raw = await read_capped(resp, _ERROR_BODY_BYTES, truncate=True)
                else:
                    raw = await read_capped(resp, self.max_bytes)
        except TimeoutError:
            status = "timeout"
            raise self._timeout("did not answer in time") from None
        except TooLarge:
            status = "too_large"
            raise self._too_large() from None
        except aiohttp.ClientError as exc:
            raise _Retry(self._failed(f"connection failed ({type(exc).__name__})")) from None
        finally:
            self._count(status)
            self._latency.observe(time.perf_counter() - t0)
        if resp.status >= 300:
            raise self._status_error(resp.status, raw, resp.headers)
        self._note_latency(time.perf_counter() - t0)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._count("bad_response")
            raise self._failed("the answer is not valid JSON") from None

    async def post_sse(
        self, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[tuple[str, bytes]]:
        """POSTs ``body`` and yields the answer's SSE events as ``(event, data)``.

        Retries happen only before the first event is yielded. Closing or cancelling the
        generator closes the upstream connection at once (the provider stops generating).
        """
        attempt = 0
        while True:
            self.breaker.check()
            ok: bool | None = None
            yielded = False
            t0 = time.perf_counter()
            status = "connect_error"
            resp: aiohttp.ClientResponse | None = None
            try:
                try:
                    async with asyncio.timeout(self.settings.first_byte_timeout):
                        resp = await self.session().post(
                            self.base_url + path, data=body, headers=headers, allow_redirects=False
                        )
                        status = str(resp.status)
                        if resp.status >= 300:
                            raw = await read_capped(resp, _ERROR_BODY_BYTES, truncate=True)
                            raise self._status_error(resp.status, raw, resp.headers)
                        if resp.content_type != "text/event-stream":
                            status = "bad_response"
                            raw = await read_capped(resp, _ERROR_BODY_BYTES, truncate=True)
                            kind = resp.content_type or "no content type"
                            msg = self._scrub(upstream_message(raw))
                            raise self._failed(f"the answer is not an event stream ({kind}): {msg}")
                        events = _sse_events(resp.content, self.max_line)
                        first = await anext(events, None)
                    self._ttft.observe(time.perf_counter() - t0)
                    self._note_latency(time.perf_counter() - t0)
                    overhead.add_wait(time.perf_counter() - t0)
                    idle = self.settings.idle_timeout
                    event = first
                    while event is not None:
                        yielded = True
                        yield event
                        async with asyncio.timeout(idle):
                            event = await anext(events, None)
                    ok = True
                    return
                except TimeoutError:
                    status = "timeout"
                    ok = False
                    raise self._timeout(
                        "stalled in the middle of the stream"
                        if yielded
                        else "did not start streaming in time"
                    ) from None
                except TooLarge:
                    status = "too_large"
                    ok = False
                    raise self._line_too_long() from None
                except aiohttp.ClientError as exc:
                    ok = False
                    if yielded:
                        raise self._failed(
                            f"connection lost during the stream ({type(exc).__name__})"
                        ) from None
                    raise _Retry(
                        self._failed(f"connection failed ({type(exc).__name__})")
                    ) from None
                except _Retry as retry:
                    ok = None if retry.error.status == 429 else False
                    raise
                except ApiError as err:
                    ok = err.status < 500
                    raise
                finally:
                    if resp is not None:
                        resp.close() if ok is not True else resp.release()
                    self._count(status)
                    self._latency.observe(time.perf_counter() - t0)
                    self.breaker.record(ok)
            except _Retry as retry:
                attempt += 1
                await self._wait_before_retry(attempt, retry)

    async def get_json(self, path: str, timeout: float) -> Any:
        """A plain GET (model lists): no retries, no breaker, bounded by ``timeout`` and
        ``IIR_UPSTREAM_MAX_BYTES``; a redirect is an error (following it would send the key on)."""
        try:
            async with asyncio.timeout(timeout):
                async with self.session().get(self.base_url + path, allow_redirects=False) as resp:
                    if 300 <= resp.status < 400:
                        raise self._failed(f"HTTP {resp.status} (redirects are not followed)")
                    if resp.status != 200:
                        raw = await read_capped(resp, _ERROR_BODY_BYTES, truncate=True)
                        raise self._failed(
                            f"HTTP {resp.status}: {self._scrub(upstream_message(raw))}"
                        )
                    raw = await read_capped(resp, self.max_bytes)
        except TooLarge:
            raise self._too_large() from None
        return orjson.loads(raw)

    async def _wait_before_retry(self, attempt: int, retry: _Retry) -> None:
        """Sleeps the back-off before attempt ``attempt + 1``, or gives up with the error."""
        delay = self._backoff(attempt, retry.delay)
        if delay is None:
            raise retry.error from None
        self._log_retry(attempt, retry.error, delay)
        t1 = time.perf_counter()
        await asyncio.sleep(delay)
        overhead.add_wait(time.perf_counter() - t1)  # waiting, not IIR's own time

    def _log_retry(self, attempt: int, err: ApiError, delay: float) -> None:
        log.info(
            "upstream attempt failed; retrying",
            extra={
                "provider": self.provider,
                "event": "retry",
                "status": err.status,
                "reason": err.message,
                "duration_ms": round(delay * 1000, 1),
            },
        )


async def read_capped(resp: aiohttp.ClientResponse, limit: int, truncate: bool = False) -> bytes:
    """The (decompressed) body, at most ``limit`` bytes: :class:`TooLarge` past it, or with
    ``truncate`` the first ``limit`` bytes (the connection is then closed, not reused)."""
    declared = resp.content_length
    if declared is not None and declared > limit and not truncate:
        raise TooLarge
    buf = bytearray()
    async for chunk in resp.content.iter_any():
        buf += chunk
        if len(buf) > limit:
            resp.close()
            if truncate:
                return bytes(buf[:limit])
            raise TooLarge
    return bytes(buf)


async def _sse_events(
    content: aiohttp.StreamReader, max_line: int = MAX_SSE_LINE
) -> AsyncIterator[tuple[str, bytes]]:
    """Server-sent events from a byte stream: ``(event name or "message", data)``.

    Lines are split here rather than with ``StreamReader.readline``, which refuses lines over
    64 KiB (a large tool-call chunk can be longer). Linear in the stream: each byte is searched
    for a newline once, and consumed lines are dropped once per chunk. A line longer than
    ``max_line`` raises :class:`TooLarge`.
    """
    event = "message"
    data: list[bytes] = []
    buf = bytearray()
    async for chunk in content.iter_any():
        scan = len(buf)  # the bytes before were searched already: no newline there
        buf += chunk
        start = 0
        while True:
            nl = buf.find(b"\n", scan)
            if nl < 0:
                break
            line = bytes(buf[start:nl]).rstrip(b"\r")
            start = scan = nl + 1
            if not line:
                if data:
                    yield event, b"\n".join(data)
                event, data = "message", []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
            elif line.startswith(b"event:"):
                event = line[6:].strip().decode("utf-8", "replace")
            # comments (":") and other fields (id, retry) carry nothing IIR uses
        if start:
            del buf[:start]
        if len(buf) > max_line:
            raise TooLarge
    tail = bytes(buf).rstrip(b"\r")
    if tail.startswith(b"data:"):  # a last line without its newline
        data.append(tail[6:] if tail.startswith(b"data: ") else tail[5:])
    if data:
        yield event, b"\n".join(data)
