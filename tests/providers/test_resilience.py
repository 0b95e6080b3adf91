"""Retries, timeouts, error mapping, fallbacks, the circuit breaker, disconnects and secrecy."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from ..harness import Server
from ..schemas import validate, validate_error
from .conftest import KEYS, provider_env
from .fakes import FakeProvider, Fault
from .test_providers import post, sse_bodies

HELLO = [{"role": "user", "content": "hello"}]


def chat(model: str, stream: bool = False) -> dict[str, object]:
    return {"model": model, "messages": HELLO, "stream": stream}


# --- retries -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault("status", 500),
        Fault("status", 503),
        Fault("status", 429, retry_after="0"),
        Fault("reset"),
    ],
    ids=["500", "503", "429-retry-after", "reset-before"],
)
@pytest.mark.parametrize("stream", [False, True])
def test_retried_until_it_works(
    iir: Server, fakes: dict[str, FakeProvider], fault: Fault, stream: bool
) -> None:
    fakes["openai"].faults.extend([fault, fault])
    r = post(iir, chat("openai/gpt-4o", stream))
    assert r.status_code == 200, r.text
    assert len(fakes["openai"].chat_requests()) == 3  # two failures, then the answer
    if stream:
        bodies = sse_bodies(r.text)
        assert bodies[-1] == "[DONE]" and not any("error" in b for b in bodies[:-1])
    else:
        validate(r.json(), "CreateChatCompletionResponse")


def test_retry_after_is_honoured(iir: Server, fakes: dict[str, FakeProvider]) -> None:
    fakes["openai"].faults.append(Fault("status", 429, retry_after="1"))
    t0 = time.monotonic()
    r = post(iir, chat("openai/gpt-4o"))
    assert r.status_code == 200
    # the back-off alone (0.01-0.05 s here) could not have taken this long
    assert time.monotonic() - t0 >= 1.0


@pytest.mark.parametrize("stream", [False, True])
def test_5xx_after_retries_is_502(
    iir: Server, fakes: dict[str, FakeProvider], stream: bool
) -> None:
    fakes["grok"].always = Fault("status", 500, message="kaboom")
    r = post(iir, chat("grok/grok-4", stream))
    assert r.status_code == 502
    body = r.json()
    validate_error(body)
    assert body["detail"].startswith("Upstream provider error: grok: HTTP 500: kaboom")
    assert len(fakes["grok"].chat_requests()) == 3  # 1 + IIR_UPSTREAM_RETRIES


def test_connection_refused_is_502(fakes: dict[str, FakeProvider]) -> None:
    env = {
        "OPENAI_API_KEY": "sk-x",
        "IIR_OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "IIR_UPSTREAM_RETRIES": "1",
        "IIR_UPSTREAM_BACKOFF_BASE": "0",
    }
    with Server(env=env) as srv:
        r = post(srv, chat("openai/gpt-4o"))
        assert r.status_code == 502
        assert r.json()["detail"].startswith("Upstream provider error: openai: connection failed")


def test_429_after_retries_is_relayed(iir: Server, fakes: dict[str, FakeProvider]) -> None:
    fakes["openrouter"].always = Fault("status", 429, retry_after="0", message="slow down")
    r = post(iir, chat("openrouter/a/b"))
    assert r.status_code == 429
    validate_error(r.json())
    assert r.json()["detail"] == "openrouter: slow down"
    assert r.headers["retry-after"] == "0"


def test_a_long_retry_after_is_not_waited_for(iir: Server, fakes: dict[str, FakeProvider]) -> None:
    fakes["openai"].always = Fault("status", 429, retry_after="3600", message="come back later")
    r = post(iir, chat("openai/gpt-4o"))
    assert r.status_code == 429 and r.headers["retry-after"] == "3600"
    assert len(fakes["openai"].chat_requests()) == 1


@pytest.mark.parametrize("status", [400, 404, 422])
def test_4xx_relayed_without_retry(
    iir: Server, fakes: dict[str, FakeProvider], status: int
) -> None:
    fakes["openai"].faults.append(Fault("status", status, message="no such thing"))
    r = post(iir, chat("openai/gpt-4o"))
    assert r.status_code == status
    validate_error(r.json())
    assert r.json()["detail"] == "openai: no such thing"
    assert len(fakes["openai"].chat_requests()) == 1


# --- timeouts and broken answers ---------------------------------------------------------------------


def test_latency_within_the_timeout_is_fine(iir: Server, fakes: dict[str, FakeProvider]) -> None:
    fakes["openai"].faults.append(Fault("latency", seconds=0.3))
    assert post(iir, chat("openai/gpt-4o")).status_code == 200


@pytest.mark.parametrize("stream", [False, True])
def test_no_first_byte_is_504(iir: Server, fakes: dict[str, FakeProvider], stream: bool) -> None:
    fakes["openai"].faults.append(Fault("stall_before"))
    r = post(iir, chat("openai/gpt-4o", stream))
    assert r.status_code == 504
    validate_error(r.json())
    assert "timeout" in r.json()["detail"]
    assert len(fakes["openai"].chat_requests()) == 1  # timeouts are not retried
    assert fakes["openai"].wait_cancelled(1)  # and the upstream request was dropped


def test_malformed_json_is_502(iir: Server, fakes: dict[str, FakeProvider]) -> None:
    fakes["openai"].faults.append(Fault("malformed"))
    r = post(iir, chat("openai/gpt-4o"))
    assert r.status_code == 502
    assert r.json()["detail"] == "Upstream provider error: openai: the answer is not valid JSON"


@pytest.mark.parametrize(
    ("provider", "fault", "words"),
    [
        ("openai", Fault("reset_mid"), "connection lost"),
        ("openai", Fault("stall"), "stalled"),
        ("openai", Fault("malformed"), "not valid JSON"),
        ("openai", Fault("error_event"), "Overloaded"),
        ("anthropic", Fault("reset_mid", at=4), "connection lost"),
        ("anthropic", Fault("stall", at=4), "stalled"),
        ("anthropic", Fault("error_event", at=4), "overloaded_error"),
    ],
)
def test_mid_stream_failure_ends_with_error_chunk_then_done(
    iir: Server, fakes: dict[str, FakeProvider], provider: str, fault: Fault, words: str
) -> None:
    fakes[provider].faults.append(fault)
    model = "anthropic/claude-sonnet-4-5" if provider == "anthropic" else "openai/gpt-4o"
    r = post(
        iir,
        {
            "model": model,
            "messages": [{"role": "user", "content": "one two three four"}],
            "stream": True,
        },
    )
    assert r.status_code == 200
    bodies = sse_bodies(r.text)
    assert bodies[-1] == "[DONE]"
    err = bodies[-2]
    assert "error" in err and words in err["detail"], err
    validate_error(err)
    content = [b for b in bodies[:-2]]
    assert any(b["choices"] and b["choices"][0]["delta"].get("content") for b in content)
    for b in content:
        validate(b, "CreateChatCompletionStreamResponse")
    assert len(fakes[provider].chat_requests()) == 1  # nothing retried once bytes were sent


def test_anthropic_failure_before_any_content_gets_a_status(
    iir: Server, fakes: dict[str, FakeProvider]
) -> None:
    # the error event comes after message_start but before any text: the client has no byte yet
    fakes["anthropic"].faults.append(Fault("error_event", at=2))
    r = post(iir, chat("anthropic/claude-sonnet-4-5", stream=True))
    assert r.status_code == 502
    assert "overloaded_error" in r.json()["detail"]


# --- fallbacks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_fallback_chain(iir: Server, fakes: dict[str, FakeProvider], stream: bool) -> None:
    # openai/flaky=nowhere/model|anthropic/claude-fallback
    fakes["openai"].always = Fault("status", 500)
    r = post(iir, chat("openai/flaky", stream))
    assert r.status_code == 200, r.text
    if stream:
        bodies = sse_bodies(r.text)
        assert {b["model"] for b in bodies[:-1]} == {"anthropic/claude-fallback"}
    else:
        assert r.json()["model"] == "anthropic/claude-fallback"
    assert len(fakes["openai"].chat_requests()) == 3
    assert fakes["anthropic"].chat_requests()[0].body["model"] == "claude-fallback"
    assert iir.wait_for_log(
        lambda ln: ln.get("event") == "fallback" and ln.get("model") == "nowhere/model"
    )


def test_fallback_not_used_for_the_clients_own_mistakes(
    iir: Server, fakes: dict[str, FakeProvider]
) -> None:
    fakes["openai"].faults.append(Fault("status", 400, message="bad request"))
    r = post(iir, chat("openai/flaky"))
    assert r.status_code == 400
    assert fakes["anthropic"].chat_requests() == []


def test_last_fallback_error_is_answered(iir: Server, fakes: dict[str, FakeProvider]) -> None:
    # grok/down=openrouter/vendor/backup; both fail
    fakes["grok"].always = Fault("status", 500)
    fakes["openrouter"].always = Fault("status", 503, message="backup down")
    r = post(iir, chat("grok/down"))
    assert r.status_code == 502
    assert "openrouter: HTTP 503: backup down" in r.json()["detail"]


# --- client disconnect ----------------------------------------------------------------------------


def test_client_disconnect_cancels_upstream(iir: Server, fakes: dict[str, FakeProvider]) -> None:
    fakes["openai"].faults.append(Fault("stall"))
    with (
        httpx.Client(base_url=iir.url, timeout=10) as c,
        c.stream(
            "POST",
            "/v1/chat/completions",
            json=chat("openai/gpt-4o", stream=True),
            headers=iir.auth,
        ) as r,
    ):
        assert r.status_code == 200
        next(r.iter_raw())
    assert fakes["openai"].wait_cancelled(1)


# --- configuration -------------------------------------------------------------------------------------


def test_unconfigured_provider_is_404_naming_the_variable() -> None:
    with Server() as srv, srv.client() as c:
        models = {m["id"] for m in c.get("/v1/models", headers=srv.auth).json()["data"]}
        assert models == {"iir/echo", "iir/echo-embed"}  # the built-in models only
        for model, variable in [
            ("openai/gpt-4o", "OPENAI_API_KEY"),
            ("anthropic/claude-sonnet-4-5", "ANTHROPIC_API_KEY"),
            ("grok/grok-4", "XAI_API_KEY or GROK_API_KEY"),
            ("openrouter/a/b", "OPENROUTER_API_KEY"),
            ("openllama/llama3", "IIR_OPENLLAMA_BASE_URL"),
        ]:
            r = c.post("/v1/chat/completions", json=chat(model), headers=srv.auth)
            assert r.status_code == 404
            validate_error(r.json())
            assert variable in r.json()["detail"] and r.json()["error"]["code"] == "model_not_found"
        status = c.get("/v1/registry/status", headers=srv.auth).json()
        reasons = {p["name"]: p["reason"] for p in status["providers"] if not p["configured"]}
        assert reasons["openllama"] == "set IIR_OPENLLAMA_BASE_URL"
        assert reasons["grok"] == "set XAI_API_KEY or GROK_API_KEY"


# --- the circuit breaker ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def breaker_env() -> Iterator[tuple[Server, FakeProvider]]:
    with FakeProvider("openai", key=KEYS["openai"]) as fake:
        env = {
            "OPENAI_API_KEY": KEYS["openai"],
            "IIR_OPENAI_BASE_URL": fake.url,
            "IIR_UPSTREAM_RETRIES": "0",
            "IIR_BREAKER_MIN_REQUESTS": "4",
            "IIR_BREAKER_FAILURE_RATE": "0.5",
            "IIR_BREAKER_OPEN_SECONDS": "3",  # long enough for a loaded machine to assert in
            "IIR_BREAKER_WINDOW": "60",
        }
        with Server(env=env) as srv:
            yield srv, fake


def circuit_state(srv: Server) -> float:
    with srv.client() as c:
        m = re.search(
            r'^iir_circuit_state\{provider="openai"\} (\S+)$', c.get("/metrics").text, re.M
        )
    assert m is not None
    return float(m.group(1))


def test_breaker_opens_fails_fast_then_probes(breaker_env: tuple[Server, FakeProvider]) -> None:
    srv, fake = breaker_env
    fake.always = Fault("status", 500)
    for _ in range(4):
        assert post(srv, chat("openai/gpt-4o")).status_code == 502
    assert circuit_state(srv) == 1
    r = post(srv, chat("openai/gpt-4o", stream=True))
    assert r.status_code == 503 and r.json()["error"]["code"] == "circuit_open"
    assert "retry-after" in r.headers
    assert len(fake.chat_requests()) == 4  # failed fast: nothing sent upstream
    time.sleep(3.2)  # past IIR_BREAKER_OPEN_SECONDS: the next request is the probe
    fake.always = None
    assert post(srv, chat("openai/gpt-4o")).status_code == 200
    assert circuit_state(srv) == 0
    assert post(srv, chat("openai/gpt-4o", stream=True)).status_code == 200


def test_failed_probe_reopens(breaker_env: tuple[Server, FakeProvider]) -> None:
    srv, fake = breaker_env
    fake.reset()
    fake.always = Fault("status", 500)
    for _ in range(4):
        post(srv, chat("openai/gpt-4o"))
    assert circuit_state(srv) == 1
    time.sleep(3.2)
    assert post(srv, chat("openai/gpt-4o")).status_code == 502  # the probe, failing
    assert circuit_state(srv) == 1
    with srv.client() as c:
        (openai_status,) = [
            p
            for p in c.get("/v1/registry/status", headers=srv.auth).json()["providers"]
            if p["name"] == "openai"
        ]
    assert openai_status == {
        "name": "openai",
        "configured": True,
        "circuit": "open",
        "reason": None,
    }
    assert post(srv, chat("openai/gpt-4o")).status_code == 503
    fake.reset()


# --- metrics, overhead header, secrecy -------------------------------------------------------------


def test_metrics_and_overhead_header(iir: Server, sdk: openai.OpenAI) -> None:
    # IIR's own time: measured (never exactly zero) and part of what the client waited for.
    started = time.perf_counter()
    raw = sdk.chat.completions.with_raw_response.create(model="openai/gpt-4o", messages=HELLO)
    waited_ms = (time.perf_counter() - started) * 1000
    assert 0 < float(raw.headers["x-iir-overhead-ms"]) < waited_ms
    started = time.perf_counter()
    r = post(iir, chat("anthropic/claude-sonnet-4-5", stream=True))
    waited_ms = (time.perf_counter() - started) * 1000
    assert 0 < float(r.headers["x-iir-overhead-ms"]) < waited_ms
    with iir.client() as c:
        text = c.get("/metrics").text
    assert re.search(
        r'^iir_upstream_requests_total\{provider="openai",status="200"\} [1-9]', text, re.M
    )
    assert re.search(r'^iir_upstream_latency_seconds_count\{provider="openai"\} [1-9]', text, re.M)
    assert re.search(r'^iir_upstream_ttft_seconds_count\{provider="anthropic"\} [1-9]', text, re.M)
    assert re.search(r'^iir_circuit_state\{provider="anthropic"\} 0', text, re.M)
    assert re.search(r"^iir_overhead_seconds_count [1-9]", text, re.M)


def test_wrong_provider_key_is_relayed_without_the_key(fakes: dict[str, FakeProvider]) -> None:
    wrong = "sk-wrong-SECRET-do-not-echo-42"
    env = {**provider_env(fakes), "OPENAI_API_KEY": wrong, "ANTHROPIC_API_KEY": wrong}
    with Server(env=env) as srv:
        for model in ("openai/gpt-4o", "anthropic/claude-sonnet-4-5"):
            for stream in (False, True):
                r = post(srv, chat(model, stream))
                assert r.status_code == 401
                validate_error(r.json())
                assert "Incorrect API key provided: [redacted]" in r.json()["detail"]
                assert wrong not in r.text
        assert fakes["openai"].chat_requests()[0].headers["authorization"] == f"Bearer {wrong}"
        srv.stop()
        assert wrong not in srv.logs()


def test_keys_never_in_logs_metrics_or_answers(iir: Server, fakes: dict[str, FakeProvider]) -> None:
    fakes["openai"].faults.append(Fault("status", 500))
    post(iir, chat("openai/gpt-4o"))
    with iir.client() as c:
        seen = c.get("/metrics").text + c.get("/v1/models", headers=iir.auth).text
    seen += iir.logs()
    assert '"event":"retry"' in iir.logs()  # the log saw the upstream failure...
    for key in KEYS.values():
        assert key not in seen  # ...and no key


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_while_waiting_for_the_answer_cancels_upstream(
    breaker_env: tuple[Server, FakeProvider], stream: bool
) -> None:
    # this server keeps the default 120 s first-byte timeout: only the disconnect can end it
    srv, fake = breaker_env
    fake.reset()
    deadline = time.monotonic() + 10  # an earlier test may have left the circuit open
    while post(srv, chat("openai/gpt-4o")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    before = fake.cancelled
    fake.faults.append(Fault("stall_before"))
    with httpx.Client(base_url=srv.url, timeout=0.5) as c, pytest.raises(httpx.ReadTimeout):
        c.post("/v1/chat/completions", json=chat("openai/gpt-4o", stream), headers=srv.auth)
    assert fake.wait_cancelled(before + 1)
    assert srv.wait_for_log(lambda ln: ln.get("msg") == "client disconnected; request cancelled")
    with srv.client() as c:  # and the server is fine afterwards
        assert (
            c.post("/v1/chat/completions", json=chat("openai/gpt-4o"), headers=srv.auth).status_code
            == 200
        )
