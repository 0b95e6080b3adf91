"""The vLLM adapter, driven through the stand-in engine (tests/fake_vllm.py): in process and in a
real ``iir serve``. The stand-in replaces only vLLM; every IIR part is the real one."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from iir.backends.local.vllm import VllmBackend, VllmEngineFactory, engine_args
from iir.core.errors import ApiError
from iir.core.protocol import parse_chat_request
from iir.core.settings import load_settings
from iir.core.types import FAILED, READY, UNAVAILABLE, Delta, Usage

from . import fake_vllm
from .harness import IIR, REPO, Server
from .schemas import validate, validate_error

FACTORY = "tests.fake_vllm:factory"


def chat(content: str = "hello there world", **kw: Any) -> Any:
    return parse_chat_request(
        {"model": "tiny", "messages": [{"role": "user", "content": content}], **kw}
    )


async def started(env: dict[str, str] | None = None) -> tuple[VllmBackend, fake_vllm.FakeFactory]:
    settings = load_settings(
        {"IIR_API_KEY": "k" * 32, "IIR_LOCAL_MODELS": "tiny=/m/tiny", **(env or {})}
    )
    factory = fake_vllm.FakeFactory()
    backend = VllmBackend(settings, factory=factory)
    await backend.start()
    await until(backend, "tiny", READY)
    return backend, factory


async def until(backend: VllmBackend, name: str, state: str) -> None:
    for _ in range(2000):
        states = {m.id: m.state for m in backend.status().models}
        if states.get(name) == state:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} never became {state}: {backend.status()}")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- in process --------------------------------------------------------------------------------


def test_complete_text_and_usage_from_token_ids() -> None:
    async def go() -> None:
        backend, factory = await started()
        try:
            done = await backend.complete(chat(), "tiny")
            assert [c.content for c in done.choices] == [" hello there world"]
            assert done.choices[0].finish_reason == "stop"
            tok = factory.engines[0].tokenizer
            rendered = tok.apply_chat_template(
                [{"role": "user", "content": "hello there world"}],
                tokenize=False,
                add_generation_prompt=True,
            )
            assert done.usage is not None
            assert done.usage.prompt_tokens == len(tok.encode(rendered, add_special_tokens=False))
            assert done.usage.completion_tokens == 3
            assert backend.count_tokens("tiny", "one two three four") == 4
            [card] = backend.models()
            assert (card.id, card.owned_by, card.context_length) == ("tiny", "local", 2048)
        finally:
            await backend.close()

    run(go())


def test_stream_deltas_then_usage() -> None:
    async def go() -> None:
        backend, _ = await started()
        try:
            events = [e async for e in backend.stream(chat("a b c d"), "tiny")]
            deltas = [e for e in events if isinstance(e, Delta)]
            assert "".join(d.content or "" for d in deltas) == " a b c d"
            assert [d.finish_reason for d in deltas] == [None, None, None, "stop"]
            assert isinstance(events[-1], Usage) and events[-1].completion_tokens == 4
        finally:
            await backend.close()

    run(go())


def test_n_stop_max_tokens_and_logprobs() -> None:
    async def go() -> None:
        backend, _ = await started()
        try:
            two = await backend.complete(chat("one two three", n=2), "tiny")
            assert [(c.index, c.content) for c in two.choices] == [
                (0, " one two three"),
                (1, " one two three"),
            ]
            assert two.usage is not None and two.usage.completion_tokens == 6
            stopped = await backend.complete(chat("one two STOP three", stop=["STOP"]), "tiny")
            assert stopped.choices[0].content == " one two"
            assert stopped.choices[0].finish_reason == "stop"
            short = await backend.complete(chat("one two three four", max_tokens=2), "tiny")
            assert (short.choices[0].content, short.choices[0].finish_reason) == (
                " one two",
                "length",
            )
            lp = await backend.complete(chat("x y", logprobs=True, top_logprobs=2), "tiny")
            content = lp.choices[0].logprobs["content"]  # type: ignore[index]
            assert [c["token"] for c in content] == [" x", " y"]
            assert content[0]["logprob"] == -0.25
            assert [t["token"] for t in content[0]["top_logprobs"]] == [" x", " maybe"]
        finally:
            await backend.close()

    run(go())


def test_sampling_params_always_set_max_tokens_and_map_fields() -> None:
    async def go() -> None:
        backend, _ = await started({"IIR_VLLM_MAX_MODEL_LEN": "100"})
        try:
            lm = backend._models["tiny"]
            assert lm.context_length == 100
            sp = backend._sampling(lm, chat(), 30)
            assert sp.max_tokens == 70 and sp.output_kind is fake_vllm.RequestOutputKind.DELTA
            sp = backend._sampling(
                lm,
                chat(
                    max_completion_tokens=5,
                    temperature=0.5,
                    top_p=0.9,
                    seed=7,
                    stop="END",
                    logit_bias={"5": 1.0},
                    presence_penalty=0.1,
                ),
                30,
            )
            assert (sp.max_tokens, sp.temperature, sp.top_p, sp.seed, sp.stop) == (
                5,
                0.5,
                0.9,
                7,
                ["END"],
            )
            assert sp.logit_bias == {5: 1.0} and sp.presence_penalty == 0.1
            with pytest.raises(ApiError) as err:
                backend._sampling(lm, chat(max_tokens=80), 30)
            assert err.value.status == 400 and err.value.code == "context_length_exceeded"
            with pytest.raises(ApiError) as err:
                backend._sampling(lm, chat(logit_bias={"abc": 1.0}), 3)
            assert err.value.param == "logit_bias"
            with pytest.raises(ApiError) as err:
                backend._sampling(lm, chat(response_format={"type": "json_object"}), 3)
            assert err.value.param == "response_format"
        finally:
            await backend.close()

    run(go())


def test_template_rejection_is_400() -> None:
    async def go() -> None:
        backend, _ = await started()
        try:
            req = parse_chat_request(
                {
                    "model": "tiny",
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "system", "content": "late system"},
                    ],
                }
            )
            with pytest.raises(ApiError) as err:
                await backend.complete(req, "tiny")
            assert err.value.status == 400 and "System message" in err.value.message
        finally:
            await backend.close()

    run(go())


def test_cancelling_a_stream_aborts_in_the_engine() -> None:
    async def go() -> None:
        backend, factory = await started()
        try:
            events = backend.stream(chat("__slow__"), "tiny")
            got = [await anext(events) for _ in range(3)]
            assert all(isinstance(e, Delta) for e in got)
            await events.aclose()  # type: ignore[attr-defined]
            engine = factory.engines[0]
            assert len(set(engine.aborted)) == 1 and engine.aborted[0].startswith("iir-")
            assert not engine._running
        finally:
            await backend.close()

    run(go())


def test_engine_error_is_502_and_engine_stays_ready() -> None:
    async def go() -> None:
        backend, _ = await started()
        try:
            with pytest.raises(ApiError) as err:
                await backend.complete(chat("__fail__"), "tiny")
            assert err.value.status == 502
            assert err.value.message.startswith("vLLM backend error: ")
            assert "illegal memory access" in err.value.message
            assert backend.degraded() == []
            assert (await backend.complete(chat("ok"), "tiny")).choices[0].content == " ok"
        finally:
            await backend.close()

    run(go())


def test_dead_engine_503_degraded_then_restarted(tmp_path: Path, monkeypatch: Any) -> None:
    gate = tmp_path / "gate"

    async def go() -> None:
        backend, factory = await started({"IIR_VLLM_RESTART_BACKOFF_S": "0.01"})
        try:
            gate.touch()
            monkeypatch.setenv("FAKE_VLLM_CREATE_GATE", str(gate))
            with pytest.raises(ApiError) as err:
                await backend.complete(chat("__die__"), "tiny")
            assert err.value.status == 502
            assert backend.status().models[0].state == FAILED
            [reason] = backend.degraded()
            assert "engine died" in reason
            with pytest.raises(ApiError) as err:
                await backend.complete(chat("hello"), "tiny")
            assert err.value.status == 503 and err.value.code == "model_unavailable"
            assert ("retry-after", "5") in err.value.headers
            gate.unlink()
            await until(backend, "tiny", READY)
            assert backend.degraded() == []
            assert (await backend.complete(chat("back"), "tiny")).choices[0].content == " back"
            assert len(factory.engines) == 2 and factory.engines[0].errored
            assert backend.status().sections["local_engine"]["engines"][0]["restarts"] == 1
        finally:
            await backend.close()

    run(go())


def test_failed_load_is_reported_and_retried(monkeypatch: Any) -> None:
    async def go() -> None:
        monkeypatch.setenv("FAKE_VLLM_FAIL_CREATE", "tiny")
        settings = load_settings(
            {
                "IIR_API_KEY": "k" * 32,
                "IIR_LOCAL_MODELS": "tiny=/m/tiny",
                "IIR_VLLM_RESTART_BACKOFF_S": "0.01",
            }
        )
        backend = VllmBackend(settings, factory=fake_vllm.FakeFactory())
        await backend.start()
        try:
            await until(backend, "tiny", FAILED)
            st = backend.status().models[0]
            assert st.reason is not None and "out of memory" in st.reason
            monkeypatch.delenv("FAKE_VLLM_FAIL_CREATE")
            await until(backend, "tiny", READY)
        finally:
            await backend.close()

    run(go())


def test_unavailable_engine_answers_503_with_the_reason(monkeypatch: Any) -> None:
    async def go() -> None:
        monkeypatch.setenv("FAKE_VLLM_UNAVAILABLE", "no usable NVIDIA GPU: test")
        settings = load_settings({"IIR_API_KEY": "k" * 32, "IIR_LOCAL_MODELS": "tiny=/m/tiny"})
        backend = VllmBackend(settings, factory=fake_vllm.FakeFactory())
        await backend.start()
        try:
            st = backend.status()
            assert (st.models[0].state, st.models[0].reason) == (
                UNAVAILABLE,
                "no usable NVIDIA GPU: test",
            )
            assert st.sections["local_engine"]["available"] is False
            assert backend.models() == [] and backend.degraded() == []
            with pytest.raises(ApiError) as err:
                await backend.complete(chat(), "tiny")
            assert err.value.status == 503 and "no usable NVIDIA GPU" in err.value.message
        finally:
            await backend.close()

    run(go())


def test_real_factory_without_vllm_says_why() -> None:
    reason = VllmEngineFactory().unavailable_reason()
    try:
        import vllm  # noqa: F401
    except ImportError:
        assert reason is not None and "vLLM is not installed" in reason
    else:  # on a box with vLLM the reason, if any, is about the GPU
        assert reason is None or "GPU" in reason


def test_engine_args_from_settings() -> None:
    s = load_settings(
        {
            "IIR_API_KEY": "k" * 32,
            "IIR_VLLM_GPU_MEMORY_UTILIZATION": "0.8",
            "IIR_VLLM_MAX_MODEL_LEN": "4096",
            "IIR_VLLM_TENSOR_PARALLEL_SIZE": "2",
            "IIR_VLLM_PIPELINE_PARALLEL_SIZE": "2",
            "IIR_VLLM_DISTRIBUTED_BACKEND": "ray",
            "IIR_VLLM_DTYPE": "bfloat16",
            "IIR_VLLM_QUANTIZATION": "awq",
            "IIR_VLLM_ENFORCE_EAGER": "true",
        }
    )
    assert engine_args("llama", "/models/llama", s.vllm) == {
        "model": "/models/llama",
        "served_model_name": ["llama"],
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 2,
        "gpu_memory_utilization": 0.8,
        "max_model_len": 4096,
        "distributed_executor_backend": "ray",
        "dtype": "bfloat16",
        "quantization": "awq",
        "enforce_eager": True,
    }
    plain = load_settings({"IIR_API_KEY": "k" * 32})
    assert engine_args("m", "org/m", plain.vllm) == {
        "model": "org/m",
        "served_model_name": ["m"],
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
    }
    ids = load_settings(
        {"IIR_API_KEY": "k" * 32, "IIR_LOCAL_MODELS": " org/a , b=/p/b ,, c = /p/c "}
    ).local_models
    assert ids == (("org/a", "org/a"), ("b", "/p/b"), ("c", "/p/c"))


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("IIR_VLLM_GPU_MEMORY_UTILIZATION", "1.5"),
        ("IIR_VLLM_GPU_MEMORY_UTILIZATION", "lots"),
        ("IIR_VLLM_MAX_MODEL_LEN", "0"),
        ("IIR_VLLM_TENSOR_PARALLEL_SIZE", "two"),
        ("IIR_VLLM_PIPELINE_PARALLEL_SIZE", "0"),
        ("IIR_VLLM_DISTRIBUTED_BACKEND", "slurm"),
        ("IIR_VLLM_DTYPE", "int3"),
        ("IIR_VLLM_QUANTIZATION", "a w q"),
        ("IIR_VLLM_ENFORCE_EAGER", "maybe"),
        ("IIR_AUTOLOAD_MODELS", "sometimes"),
        ("IIR_LOCAL_MODELS", "=/path"),
        ("IIR_LOCAL_MODELS", "a=/x,a=/y"),
        ("IIR_VLLM_ENGINE_FACTORY", "no-colon"),
    ],
)
def test_bad_engine_settings_exit_2_naming_the_variable(
    var: str, value: str, tmp_path: Path
) -> None:
    env = {"PATH": "/usr/bin:/bin", "IIR_API_KEY": "k" * 32, "IIR_DATA_DIR": str(tmp_path)}
    env[var] = value
    proc = subprocess.run(
        [IIR, "serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert var in proc.stderr and "Traceback" not in proc.stderr


# --- in a real server -------------------------------------------------------------------------


def local_env(**extra: str) -> dict[str, str]:
    return {
        "IIR_LOCAL_MODELS": "tiny=/models/tiny",
        "IIR_VLLM_ENGINE_FACTORY": FACTORY,
        "PYTHONPATH": str(REPO),
        **extra,
    }


def wait_ready(srv: Server, model: str = "tiny") -> None:
    for _ in range(600):
        r = httpx.get(srv.url + "/v1/registry/status", headers=srv.auth)
        states = {m["id"]: m["state"] for m in r.json()["models"]}
        if states.get(model) == "ready":
            return
        time.sleep(0.05)
    raise AssertionError(f"{model} never became ready:\n{srv.logs()}")


@pytest.fixture(scope="module")
def local_server() -> Iterator[Server]:
    with Server(env=local_env(IIR_VLLM_MAX_MODEL_LEN="512")) as srv:
        wait_ready(srv)
        yield srv


def sdk(srv: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=srv.key, max_retries=0)


def test_server_lists_local_model_and_answers_valid_bodies(local_server: Server) -> None:
    client = sdk(local_server)
    models = {m.id: m.owned_by for m in client.models.list().data}
    assert models["tiny"] == "local"
    resp = client.chat.completions.with_raw_response.create(
        model="tiny",
        messages=[{"role": "user", "content": "hello local engine"}],
        n=2,
        logprobs=True,
        top_logprobs=1,
    )
    body = orjson.loads(resp.content)
    validate(body, "CreateChatCompletionResponse")
    lp = body["choices"][1]["logprobs"]["content"]
    assert [t["token"] for t in lp] == [" hello", " local", " engine"]
    assert lp[0]["top_logprobs"] == [
        {"token": " hello", "logprob": -0.25, "bytes": list(b" hello")}
    ]
    assert [c["message"]["content"] for c in body["choices"]] == [" hello local engine"] * 2
    assert body["usage"]["completion_tokens"] == 6 and body["model"] == "tiny"


def sse_frames(srv: Server, content: str, **extra: Any) -> list[str]:
    """Streams a chat from the local model; returns the data of every SSE frame."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "stream": True}
    with (
        srv.client() as c,
        c.stream("POST", "/v1/chat/completions", headers=srv.auth, json={**body, **extra}) as r,
    ):
        assert r.status_code == 200
        return [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]


def test_server_streams_chunks_with_usage(local_server: Server) -> None:
    frames = sse_frames(
        local_server,
        "one two three STOP four",
        stop="STOP",
        stream_options={"include_usage": True},
    )
    assert frames[-1] == "[DONE]"
    chunks = [orjson.loads(f) for f in frames[:-1]]
    for ch in chunks:
        validate(ch, "CreateChatCompletionStreamResponse")
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"])
    assert text == " one two three"
    finishes = [ch["choices"][0]["finish_reason"] for ch in chunks if ch["choices"]]
    assert finishes[-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


def test_server_engine_error_is_502_with_detail(local_server: Server) -> None:
    r = httpx.post(
        local_server.url + "/v1/chat/completions",
        headers=local_server.auth,
        json={"model": "tiny", "messages": [{"role": "user", "content": "__fail__"}]},
    )
    assert r.status_code == 502
    validate_error(r.json())
    assert r.json()["detail"].startswith("vLLM backend error: ")
    frames = sse_frames(local_server, "a b c d e __fail_mid__")
    assert frames[-1] == "[DONE]"
    err = orjson.loads(frames[-2])
    assert err["detail"].startswith("vLLM backend error: ")


def test_server_disconnect_aborts_in_the_engine(local_server: Server) -> None:
    with (
        local_server.client() as c,
        c.stream(
            "POST",
            "/v1/chat/completions",
            headers=local_server.auth,
            json={
                "model": "tiny",
                "messages": [{"role": "user", "content": "__slow__"}],
                "stream": True,
            },
        ) as r,
    ):
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(ln.startswith("data: ") for ln in got)
    aborted = local_server.wait_for_log(lambda ln: ln.get("event") == "fake_abort", timeout=15)
    assert aborted and aborted[0]["reason"].startswith("iir-")
    assert local_server.wait_for_log(lambda ln: ln.get("event") == "local_abort", timeout=15)
    metrics = httpx.get(local_server.url + "/metrics").text
    assert 'iir_local_requests_running{model="tiny"} 0.0' in metrics
    assert 'iir_local_generation_tokens_total{model="tiny"}' in metrics
    assert 'iir_local_ttft_seconds_count{model="tiny"}' in metrics


def test_server_engine_settings_reach_the_engine(local_server: Server) -> None:
    [line] = local_server.wait_for_log(lambda ln: ln.get("event") == "fake_create")
    assert "'max_model_len': 512" in line["reason"] and line["model"] == "tiny"


def test_server_dead_engine_degrades_health_until_restarted(tmp_path: Path) -> None:
    gate = tmp_path / "create-gate"
    env = local_env(IIR_VLLM_RESTART_BACKOFF_S="0.05", FAKE_VLLM_CREATE_GATE=str(gate))
    with Server(env=env) as srv:
        wait_ready(srv)
        gate.touch()
        url = srv.url + "/v1/chat/completions"
        die = {"model": "tiny", "messages": [{"role": "user", "content": "__die__"}]}
        assert httpx.post(url, headers=srv.auth, json=die).status_code == 502
        health = httpx.get(srv.url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        # Without a key: that it is degraded, not the engine's own words.
        assert health.json()["reasons"] == ["backend unavailable"]
        detailed = httpx.get(srv.url + "/health", headers=srv.auth)
        assert detailed.status_code == 503
        assert "engine died" in detailed.json()["reasons"][0]
        hello = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}
        r = httpx.post(url, headers=srv.auth, json=hello)
        assert r.status_code == 503
        validate_error(r.json())
        echo = {"model": "iir/echo", "messages": [{"role": "user", "content": "still here"}]}
        assert httpx.post(url, headers=srv.auth, json=echo).status_code == 200
        gate.unlink()
        wait_ready(srv)
        assert httpx.get(srv.url + "/health").json() == {"status": "ok"}
        r = httpx.post(url, headers=srv.auth, json=hello)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == " hello"


def test_server_without_vllm_serves_everything_else() -> None:
    # The real engine factory: vLLM is not installed in the test environment (or there is no GPU).
    env = {"IIR_LOCAL_MODELS": "meta-llama/Meta-Llama-3-8B-Instruct"}
    with Server(env=env) as srv:
        st = httpx.get(srv.url + "/v1/registry/status", headers=srv.auth).json()
        [local] = [m for m in st["models"] if m["source"] == "local"]
        assert local["id"] == "meta-llama/Meta-Llama-3-8B-Instruct"
        assert local["state"] == "unavailable" and local["reason"]
        assert st["local_engine"]["available"] is False
        assert srv.wait_for_log(lambda ln: ln.get("event") == "local_unavailable")
        assert httpx.get(srv.url + "/health").status_code == 200
        r = httpx.post(
            srv.url + "/v1/chat/completions",
            headers=srv.auth,
            json={
                "model": "meta-llama/Meta-Llama-3-8B-Instruct",
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert r.status_code == 503 and local["reason"] in r.json()["detail"]
        ids = [m["id"] for m in httpx.get(srv.url + "/v1/models", headers=srv.auth).json()["data"]]
        assert ids == ["iir/echo", "iir/echo-embed"]  # the built-in models only
