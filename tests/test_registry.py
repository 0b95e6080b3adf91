"""The model registry: status document, model-folder scanning, refresh (coalesced, harmless)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import pytest

from iir.backends.base import Backend
from iir.backends.echo import EchoBackend
from iir.backends.local.modeldir import scan
from iir.backends.registry import ModelRegistry
from iir.core.protocol import ChatRequest
from iir.core.types import BackendStatus, Completion, ModelCard, ProviderStatus

from .harness import REPO, Server
from .test_vllm_backend import FACTORY, wait_ready


def hf_folder(
    root: Path, name: str, weights: bool = True, tokenizer: bool = True, **cfg: Any
) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "config.json").write_bytes(
        orjson.dumps(
            {"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 8192, **cfg}
        )
    )
    if tokenizer:
        (path / "tokenizer.json").write_text("{}")
        (path / "tokenizer_config.json").write_text("{}")
    if weights:
        (path / "model.safetensors").write_bytes(b"\0" * 16)
    return path


def status_schema(srv: Server) -> dict[str, Any]:
    doc = httpx.get(srv.url + "/openapi.json").json()
    return {"$ref": "#/components/schemas/RegistryStatus", "components": doc["components"]}


# --- scanning ----------------------------------------------------------------------------------


def test_scan_finds_hf_folders_flat_and_nested(tmp_path: Path) -> None:
    hf_folder(tmp_path, "llama-tiny")
    hf_folder(tmp_path, "meta-llama/Meta-Llama-3-8B-Instruct", text_config={"x": 1})
    hf_folder(tmp_path, "no-weights", weights=False)
    hf_folder(tmp_path, "no-tokenizer", tokenizer=False)
    hf_folder(
        tmp_path,
        "qwen-vl",
        max_position_embeddings=None,
        text_config={"max_position_embeddings": 32768},
    )
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    found, reason = scan(tmp_path)
    assert reason is None
    by = {f.name: f for f in found}
    assert set(by) == {
        "llama-tiny",
        "meta-llama/Meta-Llama-3-8B-Instruct",
        "no-weights",
        "no-tokenizer",
        "qwen-vl",
        "broken",
    }
    assert by["llama-tiny"].problem is None and by["llama-tiny"].context_length == 8192
    assert by["meta-llama/Meta-Llama-3-8B-Instruct"].problem is None
    assert by["no-weights"].problem is not None and "weights" in by["no-weights"].problem
    assert by["no-tokenizer"].problem is not None and "tokenizer" in by["no-tokenizer"].problem
    assert by["qwen-vl"].context_length == 32768
    assert by["broken"].problem == "config.json is not valid JSON"
    missing, why = scan(tmp_path / "absent")
    assert missing == [] and why is not None and "does not exist" in why


# --- the registry in process -------------------------------------------------------------------


class SlowProvider(Backend):
    """A remote provider whose model-list refresh waits for the test (a stand-in for a network)."""

    name = "upstream"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.calls = 0

    def models(self) -> list[ModelCard]:
        return [ModelCard("up-model", "upstream")]

    async def complete(self, request: ChatRequest, model: str) -> Completion:
        raise NotImplementedError

    def stream(self, request: ChatRequest, model: str) -> AsyncIterator[Any]:
        raise NotImplementedError

    def status(self) -> BackendStatus:
        base = super().status()
        base.provider = ProviderStatus(
            "upstream", configured=True, circuit="open", reason="5 errors"
        )
        return base

    async def refresh(self) -> None:
        self.calls += 1
        self.entered.set()
        await self.release.wait()


def test_concurrent_refreshes_coalesce_into_one() -> None:
    async def go() -> None:
        provider = SlowProvider()
        registry = ModelRegistry([EchoBackend(), provider])
        first = asyncio.ensure_future(registry.refresh())
        await provider.entered.wait()
        others = [asyncio.ensure_future(registry.refresh()) for _ in range(5)]
        await asyncio.sleep(0)
        provider.release.set()
        results = await asyncio.gather(first, *others)
        assert provider.calls == 1 and registry.refreshes == 1
        assert all(r["refreshes"] == 1 for r in results)
        # A later refresh is a new one.
        again = await registry.refresh()
        assert provider.calls == 2 and again["refreshes"] == 2
        assert again["providers"] == [
            {"name": "upstream", "configured": True, "circuit": "open", "reason": "5 errors"}
        ]
        assert {(m["id"], m["source"], m["state"]) for m in again["models"]} == {
            ("iir/echo", "echo", "ready"),
            ("up-model", "upstream", "ready"),
        }

    asyncio.run(go())


def test_a_cancelled_caller_does_not_cancel_the_shared_refresh() -> None:
    async def go() -> None:
        provider = SlowProvider()
        registry = ModelRegistry([provider])
        impatient = asyncio.ensure_future(registry.refresh())
        await provider.entered.wait()
        patient = asyncio.ensure_future(registry.refresh())
        await asyncio.sleep(0)
        impatient.cancel()
        provider.release.set()
        assert (await patient)["refreshes"] == 1

    asyncio.run(go())


# --- the registry in a real server -------------------------------------------------------------


def test_status_document_without_local_models(server: Server) -> None:
    assert httpx.get(server.url + "/v1/registry/status").status_code == 401
    assert httpx.post(server.url + "/v1/registry/refresh").status_code == 401
    body = httpx.get(server.url + "/v1/registry/status", headers=server.auth).json()
    jsonschema.validate(body, status_schema(server))
    assert body["models"][0] == {
        "id": "iir/echo",
        "source": "echo",
        "state": "ready",
        "reason": None,
        "context_length": None,
        "shadowed": False,
    }
    # remote providers are listed even when not configured (this server sets no provider key)
    assert [(p["name"], p["configured"]) for p in body["providers"]] == [
        ("openai", False),
        ("anthropic", False),
        ("grok", False),
        ("openrouter", False),
        ("openllama", False),
    ]
    assert body["degraded"] == []
    hw = body["hardware"]
    assert hw["cpu_count"] >= 1 and hw["memory_total_bytes"] > 0
    assert hw["gpus"] or hw["gpu_reason"]  # either GPU facts or why there are none
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert "get" in paths["/v1/registry/status"] and "post" in paths["/v1/registry/refresh"]


def test_model_dir_scan_refresh_and_autoload(tmp_path: Path) -> None:
    models = tmp_path / "models"
    hf_folder(models, "org/first")
    hf_folder(models, "half", weights=False)
    env = {
        "IIR_MODEL_DIR": str(models),
        "IIR_AUTOLOAD_MODELS": "true",
        "IIR_VLLM_ENGINE_FACTORY": FACTORY,
        "PYTHONPATH": str(REPO),
    }
    with Server(env=env) as srv:
        wait_ready(srv, "org/first")
        body = httpx.get(srv.url + "/v1/registry/status", headers=srv.auth).json()
        jsonschema.validate(body, status_schema(srv))
        by = {m["id"]: m for m in body["models"]}
        assert by["org/first"]["source"] == "local" and by["org/first"]["context_length"] == 2048
        assert by["half"]["state"] == "unavailable" and "weights" in by["half"]["reason"]
        assert body["local_engine"]["model_dir"] == str(models)

        # A slow answer runs across a refresh that finds a new folder: it is not disturbed.
        url = srv.url + "/v1/chat/completions"
        ask = {
            "model": "org/first",
            "messages": [{"role": "user", "content": "__slow__"}],
            "stream": True,
            "max_tokens": 40,
        }
        with (
            srv.client() as c,
            c.stream("POST", "/v1/chat/completions", headers=srv.auth, json=ask) as r,
        ):
            lines = r.iter_lines()
            head = [next(lines) for _ in range(4)]
            hf_folder(models, "second", max_position_embeddings=4096)
            refreshed = httpx.post(srv.url + "/v1/registry/refresh", headers=srv.auth).json()
            jsonschema.validate(refreshed, status_schema(srv))
            assert refreshed["refreshes"] == 1
            assert {m["id"] for m in refreshed["models"]} >= {"org/first", "second", "half"}
            rest = list(lines)
        frames = [ln[6:] for ln in head + rest if ln.startswith("data: ")]
        assert frames[-1] == "[DONE]"
        last = orjson.loads(frames[-2])
        assert last["choices"][0]["finish_reason"] == "length"
        text = "".join(
            orjson.loads(f)["choices"][0]["delta"].get("content", "") for f in frames[:-1]
        )
        assert text == " tick" * 40

        wait_ready(srv, "second")
        r = httpx.post(
            url,
            headers=srv.auth,
            json={"model": "second", "messages": [{"role": "user", "content": "new"}]},
        )
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == " new"
        listed = {
            m["id"]: m["owned_by"]
            for m in httpx.get(srv.url + "/v1/models", headers=srv.auth).json()["data"]
        }
        assert (
            listed["second"] == "local" and listed["org/first"] == "local" and "half" not in listed
        )


def test_found_folders_wait_for_autoload(tmp_path: Path) -> None:
    models = tmp_path / "models"
    hf_folder(models, "later")
    env = {
        "IIR_MODEL_DIR": str(models),
        "IIR_VLLM_ENGINE_FACTORY": FACTORY,
        "PYTHONPATH": str(REPO),
    }
    with Server(env=env) as srv:
        body = httpx.get(srv.url + "/v1/registry/status", headers=srv.auth).json()
        [later] = [m for m in body["models"] if m["id"] == "later"]
        assert later["state"] == "unavailable" and "IIR_AUTOLOAD_MODELS" in later["reason"]
        assert later["context_length"] == 8192
        r = httpx.post(
            srv.url + "/v1/chat/completions",
            headers=srv.auth,
            json={"model": "later", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 503 and "IIR_AUTOLOAD_MODELS" in r.json()["detail"]
        # The folder goes away: a refresh forgets it.
        for p in sorted((models / "later").iterdir()):
            p.unlink()
        (models / "later").rmdir()
        after = httpx.post(srv.url + "/v1/registry/refresh", headers=srv.auth).json()
        assert "later" not in {m["id"] for m in after["models"]}


def test_concurrent_http_refreshes_share_one_run(tmp_path: Path) -> None:
    gate = tmp_path / "refresh-gate"
    env = {
        "IIR_LOCAL_MODELS": "tiny=/models/tiny",
        "IIR_VLLM_ENGINE_FACTORY": FACTORY,
        "PYTHONPATH": str(REPO),
        "FAKE_VLLM_REFRESH_GATE": str(gate),
    }
    with Server(env=env) as srv:
        wait_ready(srv)
        gate.touch()
        results: list[dict[str, Any]] = []

        def refresh() -> None:
            results.append(
                httpx.post(srv.url + "/v1/registry/refresh", headers=srv.auth, timeout=60).json()
            )

        threads = [threading.Thread(target=refresh) for _ in range(4)]
        for t in threads:
            t.start()
        # Every request is inside the (blocked) refresh once the server counts 4 in flight
        # besides the /metrics request itself.
        for _ in range(1200):
            text = httpx.get(srv.url + "/metrics").text
            line = next(ln for ln in text.splitlines() if ln.startswith("iir_inflight_requests "))
            if float(line.split()[1]) >= 5:
                break
            threading.Event().wait(0.05)
        else:
            raise AssertionError("refresh requests never arrived")
        gate.unlink()
        for t in threads:
            t.join(60)
        assert len(results) == 4 and {r["refreshes"] for r in results} == {1}
        logs = srv.wait_for_log(lambda ln: ln.get("event") == "registry_refresh")
        assert len(logs) == 1


def test_refresh_leaves_a_failing_folder_model_to_its_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from iir.backends.local.vllm import VllmBackend
    from iir.core.settings import load_settings

    from . import fake_vllm
    from .test_vllm_backend import until

    hf_folder(tmp_path, "flaky")
    monkeypatch.setenv("FAKE_VLLM_FAIL_CREATE", "flaky")
    settings = load_settings(
        {
            "IIR_API_KEY": "k" * 32,
            "IIR_MODEL_DIR": str(tmp_path),
            "IIR_AUTOLOAD_MODELS": "1",
            "IIR_VLLM_RESTART_BACKOFF_S": "30",
        }
    )

    async def go() -> None:
        backend = VllmBackend(settings, factory=fake_vllm.FakeFactory())
        await backend.start()
        try:
            await until(backend, "flaky", "failed")
            entry = backend._models["flaky"]
            retry = entry.restart_task
            assert retry is not None and not retry.done()
            await backend.refresh()
            await backend.refresh()
            assert backend._models["flaky"] is entry and entry.restart_task is retry
            assert backend.status().models[0].state == "failed"
            assert backend._queue.empty()
        finally:
            await backend.close()

    asyncio.run(go())
