"""Routing through the real server: ``model: "auto"`` lands on iir/echo (playing the local model)
or on fake OpenAI/Anthropic servers, falls back, explains itself, and answers 503 when nothing can
serve."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from .harness import Server
from .providers.fakes import FakeProvider, Fault
from .schemas import validate

DATA = __import__("pathlib").Path(__file__).parent / "data"
ROUTE_HEADERS = (
    "x-iir-route-model",
    "x-iir-route-strategy",
    "x-iir-route-category",
    "x-iir-route-reason",
)


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeProvider]]:
    out = {
        "openai": FakeProvider("openai", key="sk-openai-ROUTING-0123456789"),
        "anthropic": FakeProvider("anthropic", key="sk-ant-ROUTING-0123456789"),
    }
    for fake in out.values():
        fake.start()
    yield out
    for fake in out.values():
        fake.stop()


def _env(fakes: dict[str, FakeProvider], policy: str, **extra: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": fakes["openai"].key or "",
        "IIR_OPENAI_BASE_URL": fakes["openai"].url,
        "ANTHROPIC_API_KEY": fakes["anthropic"].key or "",
        "IIR_ANTHROPIC_BASE_URL": fakes["anthropic"].url,
        "IIR_UPSTREAM_RETRIES": "0",
        "IIR_BREAKER_MIN_REQUESTS": "100000",
        "IIR_ROUTING_FILE": str(DATA / policy),
        **extra,
    }


@pytest.fixture(scope="module")
def srv(fakes: dict[str, FakeProvider]) -> Iterator[Server]:
    with Server(env=_env(fakes, "routing_e2e.toml", IIR_DEFAULT_MODEL="auto")) as s:
        yield s


@pytest.fixture(autouse=True)
def _clean(fakes: dict[str, FakeProvider]) -> Iterator[None]:
    for fake in fakes.values():
        fake.reset()
    yield


def ask(
    srv: Server, text: str, headers: dict[str, str] | None = None, **body: object
) -> httpx.Response:
    payload = {"model": "auto", "messages": [{"role": "user", "content": text}], **body}
    return httpx.post(
        srv.url + "/v1/chat/completions",
        content=orjson.dumps({k: v for k, v in payload.items() if v is not None}),
        headers={**srv.auth, "content-type": "application/json", **(headers or {})},
        timeout=30,
    )


def test_auto_routes_small_talk_to_the_local_model(
    srv: Server, fakes: dict[str, FakeProvider]
) -> None:
    r = ask(srv, "Hello! How are you today?")
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateChatCompletionResponse")
    assert body["model"] == "iir/echo"
    assert r.headers["x-iir-route-model"] == "iir/echo"
    assert r.headers["x-iir-route-strategy"] == "local-first"
    assert r.headers["x-iir-route-category"] == "chat"
    assert "local" in r.headers["x-iir-route-reason"]
    assert not fakes["openai"].chat_requests() and not fakes["anthropic"].chat_requests()


def test_iir_auto_and_a_missing_model_are_routed_too(srv: Server) -> None:
    r = ask(srv, "Hi there", model="iir/auto")
    assert r.status_code == 200 and r.headers["x-iir-route-model"] == "iir/echo"
    r = ask(srv, "Hi there", model=None)  # IIR_DEFAULT_MODEL=auto
    assert r.status_code == 200 and r.json()["model"] == "iir/echo"


def test_auto_sends_math_to_the_best_remote_model(
    srv: Server, fakes: dict[str, FakeProvider]
) -> None:
    r = ask(srv, "Solve the equation 3x + 7 = 22 for x.")
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "anthropic/fake-large"
    assert r.headers["x-iir-route-category"] == "math"
    assert "sends math" in r.headers["x-iir-route-reason"]
    sent = fakes["anthropic"].chat_requests()
    assert len(sent) == 1 and sent[0].body["model"] == "fake-large"


def test_tools_need_a_remote_model(srv: Server, fakes: dict[str, FakeProvider]) -> None:
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    r = ask(srv, "Hi! What's the weather in Paris?", tools=[tool])
    assert r.status_code == 200, r.text
    assert r.headers["x-iir-route-model"] == "openai/fake-small"
    assert len(fakes["openai"].chat_requests()) == 1


def test_strategy_header_overrides_the_default(srv: Server) -> None:
    r = ask(srv, "Hello!", headers={"x-iir-strategy": "remote-only"})
    assert r.status_code == 200, r.text
    assert r.headers["x-iir-route-model"] == "openai/fake-small"
    assert r.headers["x-iir-route-strategy"] == "remote-only"
    r = ask(srv, "Hello!", headers={"x-iir-strategy": "cost"})
    assert r.headers["x-iir-route-model"] == "iir/echo"
    r = ask(srv, "Hello!", headers={"x-iir-strategy": "teleport"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "x-iir-strategy"


def test_streamed_auto_carries_the_route_headers(srv: Server) -> None:
    with httpx.stream(
        "POST",
        srv.url + "/v1/chat/completions",
        json={"model": "auto", "stream": True, "messages": [{"role": "user", "content": "Hey!"}]},
        headers=srv.auth,
        timeout=30,
    ) as r:
        assert r.status_code == 200
        assert r.headers["x-iir-route-model"] == "iir/echo"
        frames = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert frames[-1] == "data: [DONE]"
    assert orjson.loads(frames[0][6:])["model"] == "iir/echo"


@pytest.mark.parametrize("stream", [False, True])
def test_falls_back_when_the_first_choice_fails(
    srv: Server, fakes: dict[str, FakeProvider], stream: bool
) -> None:
    fakes["anthropic"].always = Fault("status", status=500)
    r = ask(srv, "Solve the equation 3x + 7 = 22 for x.", stream=stream or None)
    assert r.status_code == 200, r.text
    assert r.headers["x-iir-route-model"] == "openai/fake-small"
    assert len(fakes["anthropic"].chat_requests()) == 1
    assert len(fakes["openai"].chat_requests()) == 1
    if not stream:
        assert r.json()["model"] == "openai/fake-small"
    lines = srv.wait_for_log(lambda ln: ln.get("event") == "fallback")
    assert any(ln.get("model") == "anthropic/fake-large" for ln in lines)


def test_explicit_model_is_honoured_and_gets_routed_fallbacks(
    srv: Server, fakes: dict[str, FakeProvider]
) -> None:
    r = ask(srv, "Hello!", model="anthropic/fake-large")
    assert r.status_code == 200 and r.json()["model"] == "anthropic/fake-large"
    assert "requested explicitly" in r.headers["x-iir-route-reason"]
    fakes["anthropic"].always = Fault("status", status=503)
    r = ask(srv, "Hello!", model="anthropic/fake-large")
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "iir/echo"  # the routed first choice for small talk
    r = ask(srv, "Hello!", model="nowhere/model")
    assert r.status_code == 404


def test_route_endpoint_decides_without_running(
    srv: Server, fakes: dict[str, FakeProvider]
) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "Prove that 17 is prime."}]}
    r = httpx.post(srv.url + "/v1/route", json=body, headers=srv.auth, timeout=30)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["object"] == "route.decision"
    assert d["model"] == "anthropic/fake-large" == d["candidates"][0]
    assert d["category"] == "math" and d["strategy"] == "local-first"
    assert {"model": "iir/echo", "why": "policy: never for math"} in d["excluded"]
    assert d["features"]["prompt_tokens"] > 0 and d["reason"]
    assert not fakes["anthropic"].chat_requests()
    assert all(h in r.headers for h in ROUTE_HEADERS)
    assert httpx.post(srv.url + "/v1/route", json=body, timeout=30).status_code == 401
    bad = httpx.post(srv.url + "/v1/route", json={"messages": "x"}, headers=srv.auth, timeout=30)
    assert bad.status_code == 400


def test_503_when_the_policy_forbids_every_option(srv: Server) -> None:
    r = ask(srv, "Solve the equation 3x + 7 = 22", headers={"x-iir-strategy": "local-only"})
    assert r.status_code == 503
    body = r.json()
    assert body["detail"].startswith("Classifier error: ")
    assert body["error"]["code"] == "classifier_error"


def test_route_metrics(srv: Server) -> None:
    ask(srv, "Hello!")
    text = httpx.get(srv.url + "/metrics", timeout=10).text
    assert (
        'iir_route_decisions_total{category="chat",strategy="local-first",target="iir/echo"}'
        in text
    )
    assert "iir_route_decision_seconds_bucket" in text


def test_503_when_every_circuit_is_open(fakes: dict[str, FakeProvider]) -> None:
    env = _env(
        fakes,
        "routing_remote_only.toml",
        IIR_BREAKER_MIN_REQUESTS="1",
        IIR_BREAKER_OPEN_SECONDS="300",
    )
    for fake in fakes.values():
        fake.always = Fault("status", status=500)
    with Server(env=env) as s:
        for model in ("openai/fake-small", "anthropic/fake-large"):
            assert ask(s, "Hello", model=model).status_code in (502, 503)
        r = ask(s, "Hello")
        assert r.status_code == 503
        assert r.json()["detail"] == (
            "Classifier error: no model can serve this request: all circuits are open"
        )
        route = httpx.post(
            s.url + "/v1/route",
            json={"model": "auto", "messages": [{"role": "user", "content": "Hi"}]},
            headers=s.auth,
            timeout=30,
        )
        assert route.status_code == 503


def test_503_when_nothing_is_configured() -> None:
    # The built-in policy, but no provider configured and no local engine: nothing can serve.
    with Server() as s:
        r = ask(s, "Hello")
        assert r.status_code == 503
        assert r.json()["detail"].startswith("Classifier error: no model can serve this request")
        r = httpx.post(
            s.url + "/infer",
            json={"model": "auto", "input": {"prompt": "Hello"}},
            headers=s.auth,
            timeout=30,
        )
        assert r.status_code == 503 and r.json()["detail"].startswith("Classifier error: ")
        # named models run as before: the built-in policy adds no routed fallbacks to them
        r = ask(s, "Hello", model="iir/echo")
        assert r.status_code == 200
        assert "x-iir-route-model" not in r.headers


# --- with the local engine's stand-in ------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_srv(fakes: dict[str, FakeProvider]) -> Iterator[Server]:
    from .test_vllm_backend import local_env, wait_ready

    env = {
        **_env(fakes, "routing_engine.toml"),
        **local_env(IIR_VLLM_MAX_MODEL_LEN="512", IIR_LOCAL_MAX_QUEUE="0"),
    }
    with Server(env=env) as s:
        wait_ready(s)
        yield s


def test_auto_routes_to_the_local_engine(
    engine_srv: Server, fakes: dict[str, FakeProvider]
) -> None:
    r = ask(engine_srv, "Hello, how are you?")
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "tiny"
    assert r.headers["x-iir-route-model"] == "tiny"
    assert r.headers["x-iir-route-reason"] == "local model can serve chat"
    assert not fakes["openai"].chat_requests()


def test_engine_context_length_sends_long_prompts_out(engine_srv: Server) -> None:
    r = ask(engine_srv, "Please reply to this note. " + "word " * 600)
    assert r.status_code == 200, r.text
    assert r.headers["x-iir-route-model"] == "openai/fake-small"
    d = httpx.post(
        engine_srv.url + "/v1/route",
        json={"model": "auto", "messages": [{"role": "user", "content": "word " * 600}]},
        headers=engine_srv.auth,
        timeout=30,
    ).json()
    assert any(e["model"] == "tiny" and e["why"].startswith("context 512 <") for e in d["excluded"])


def test_local_queue_over_the_limit_goes_remote(engine_srv: Server) -> None:
    body = {"model": "tiny", "stream": True, "messages": [{"role": "user", "content": "__slow__"}]}
    with httpx.stream(
        "POST", engine_srv.url + "/v1/chat/completions", json=body, headers=engine_srv.auth
    ) as slow:
        assert slow.status_code == 200
        lines = slow.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # the engine is busy now
        r = ask(engine_srv, "Hello!")
        assert r.status_code == 200, r.text
        assert r.headers["x-iir-route-model"] == "openai/fake-small"
        assert "local queue 1 over 0" in r.headers["x-iir-route-reason"]
    # the slow request ends once the server sees the client gone; then local is first again
    deadline = time.monotonic() + 10
    while ask(engine_srv, "Hello!").headers["x-iir-route-model"] != "tiny":
        assert time.monotonic() < deadline, "the local queue never drained"
        time.sleep(0.05)


def test_falls_back_to_remote_when_the_engine_fails(
    engine_srv: Server, fakes: dict[str, FakeProvider]
) -> None:
    r = ask(engine_srv, "hello __fail__")
    assert r.status_code == 200, r.text
    assert r.headers["x-iir-route-model"] == "openai/fake-small"
    assert r.json()["model"] == "openai/fake-small"
    assert len(fakes["openai"].chat_requests()) == 1


def test_infer_and_async_jobs_route_auto(srv: Server) -> None:
    r = httpx.post(
        srv.url + "/infer",
        json={"model": "auto", "input": {"prompt": "Hello there!"}},
        headers=srv.auth,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "iir/echo"
    job = httpx.post(
        srv.url + "/v1/async/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "Hi!"}]},
        headers=srv.auth,
        timeout=30,
    )
    assert job.status_code == 202, job.text
    job_id = job.json()["job_id"]
    deadline = time.monotonic() + 20
    while True:
        got = httpx.get(
            srv.url + f"/v1/async/chat/completions/{job_id}", headers=srv.auth, timeout=30
        )
        state = got.headers.get("x-iir-job-status")
        if state in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, got.text
        time.sleep(0.05)
    assert state == "succeeded", got.text
    assert got.json()["model"] == "iir/echo"
