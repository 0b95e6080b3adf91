"""``/v1/embeddings`` and legacy ``/v1/completions`` through the real server and the official
SDK, on ``iir/echo-embed`` / ``iir/echo`` and on the local engine (the vLLM stand-in); the
capabilities ``/v1/models`` reports and the 404 for a model that cannot serve a route; limits."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from .harness import REPO, Server
from .schemas import validate, validate_error

FACTORY = "tests.fake_vllm:factory"


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    env = {
        "IIR_LOCAL_MODELS": "tiny=/models/tiny,embedder=/models/embedder#embed",
        "IIR_VLLM_ENGINE_FACTORY": FACTORY,
        "IIR_VLLM_MAX_MODEL_LEN": "512",
        "PYTHONPATH": str(REPO),
    }
    with Server(env=env) as s:
        for _ in range(600):
            r = httpx.get(s.url + "/v1/registry/status", headers=s.auth)
            states = {m["id"]: m["state"] for m in r.json()["models"]}
            if states.get("tiny") == states.get("embedder") == "ready":
                break
        else:
            raise AssertionError(s.logs())
        yield s


@pytest.fixture(scope="module")
def sdk(srv: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=srv.key, max_retries=0)


def post(srv: Server, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(srv.url + path, json=body, headers=srv.auth, timeout=30)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


# --- embeddings ---------------------------------------------------------------------------------


def test_echo_embed_vectors(srv: Server, sdk: openai.OpenAI) -> None:
    r = post(srv, "/v1/embeddings", {"model": "iir/echo-embed", "input": ["red apples", "x"]})
    body = r.json()
    validate(body, "CreateEmbeddingResponse")
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    vectors = [d["embedding"] for d in body["data"]]
    assert all(len(v) == 256 and math.isclose(cosine(v, v), 1.0) for v in vectors)
    # Deterministic, and texts that share words point the same way.
    again = sdk.embeddings.create(model="iir/echo-embed", input="red apples")
    assert again.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)  # base64 by default
    near = sdk.embeddings.create(model="iir/echo-embed", input="apples red green").data[0]
    far = sdk.embeddings.create(model="iir/echo-embed", input="blue ocean waves").data[0]
    assert cosine(vectors[0], near.embedding) > cosine(vectors[0], far.embedding)
    small = sdk.embeddings.create(model="iir/echo-embed", input="red apples", dimensions=16)
    assert len(small.data[0].embedding) == 16


def test_base64_is_little_endian_float32(srv: Server) -> None:
    body = {"model": "iir/echo-embed", "input": "abc"}
    floats = post(srv, "/v1/embeddings", body).json()["data"][0]["embedding"]
    packed = post(srv, "/v1/embeddings", {**body, "encoding_format": "base64"})
    # (OpenAI's schema knows only the float form; the base64 one is a string, as OpenAI sends it.)
    raw = base64.b64decode(packed.json()["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(floats, abs=1e-6)


def test_token_arrays_and_auto(srv: Server) -> None:
    r = post(srv, "/v1/embeddings", {"model": "auto", "input": [[1, 2, 3], [4]]})
    assert r.status_code == 200, r.text
    # auto picks an embedding model, this box's own first.
    assert r.json()["model"] == "embedder" and r.json()["usage"]["prompt_tokens"] == 4
    r = post(srv, "/v1/embeddings", {"model": "iir/echo-embed", "input": [5, 6, 7]})
    assert len(r.json()["data"]) == 1


def test_local_embedding_model(srv: Server, sdk: openai.OpenAI) -> None:
    out = sdk.embeddings.create(model="embedder", input=["one two", "three"])
    assert [len(d.embedding) for d in out.data] == [8, 8]
    assert out.usage.prompt_tokens == 5  # its own tokenizer: a word a token, a BOS per input
    # The stand-in, like vLLM, refuses other dimensions for a model without matryoshka support.
    r = post(srv, "/v1/embeddings", {"model": "embedder", "input": "x", "dimensions": 4})
    assert r.status_code == 400 and "matryoshka" in r.json()["detail"]
    validate_error(r.json())


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["ok", ""]}, "input"),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": ["x"] * 2049}, "input"),
        ({"input": [[-1]]}, "input"),
        ({"input": 7}, "input"),
    ],
)
def test_bad_embeddings_requests_are_400(srv: Server, body: dict[str, Any], param: str) -> None:
    r = post(srv, "/v1/embeddings", {"model": "iir/echo-embed", **body})
    assert r.status_code == 400, r.text
    validate_error(r.json())
    assert r.json()["error"]["param"].startswith(param)


# --- legacy completions ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["iir/echo", "tiny"])
def test_completions(srv: Server, sdk: openai.OpenAI, model: str) -> None:
    r = post(srv, "/v1/completions", {"model": model, "prompt": "the quick brown fox"})
    body = r.json()
    validate(body, "CreateCompletionResponse")
    assert body["object"] == "text_completion" and body["model"] == model
    assert body["choices"][0]["text"].strip() == "the quick brown fox"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 4
    cut = sdk.completions.create(model=model, prompt="a b c d e", max_tokens=2, echo=True)
    assert cut.choices[0].text.replace(" ", "") == "abcdeab"
    assert cut.choices[0].finish_reason == "length"
    many = sdk.completions.create(model=model, prompt=["one", "two three"], n=2)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert [c.text.strip() for c in many.choices] == ["one", "one", "two three", "two three"]


@pytest.mark.parametrize("model", ["iir/echo", "tiny"])
def test_completions_stream_and_logprobs(srv: Server, sdk: openai.OpenAI, model: str) -> None:
    chunks = list(
        sdk.completions.create(
            model=model,
            prompt="alpha beta gamma",
            stream=True,
            logprobs=1,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.strip() == "alpha beta gamma"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    # (A streamed piece the scrubber held back a tail of loses its logprobs, as on chat.)
    whole = sdk.completions.create(model=model, prompt="alpha beta", logprobs=1)
    lp = whole.choices[0].logprobs
    assert lp is not None and len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == 2
    assert lp.text_offset[0] == 0


def test_suffix_is_refused_where_unsupported(srv: Server) -> None:
    r = post(srv, "/v1/completions", {"model": "tiny", "prompt": "x", "suffix": "y"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "suffix"
    validate_error(r.json())
    # iir/echo answers with the prompt: nothing comes after it, so a suffix changes nothing.
    r = post(srv, "/v1/completions", {"model": "iir/echo", "prompt": "x y", "suffix": "z"})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "x y"


def test_whole_floats_count_as_integers(srv: Server) -> None:
    """JSON Schema's integers include ``2.0`` (the document allows it); the backend reads the
    integer validation made of it. A fraction is still a 400 naming the field."""
    body = {"model": "iir/echo", "prompt": "a b c", "n": 2.0, "max_tokens": 2.0}
    r = post(srv, "/v1/completions", {**body, "logprobs": 1.0, "seed": 7.0, "best_of": 3.0})
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert len(choices) == 2 and choices[0]["text"].split() == ["a", "b"]
    assert len(choices[0]["logprobs"]["tokens"]) == 2  # logprobs 1.0 was read as 1
    for name in ("n", "max_tokens", "logprobs", "seed", "best_of"):
        r = post(srv, "/v1/completions", {"model": "iir/echo", "prompt": "x", name: 2.5})
        assert r.status_code == 400 and r.json()["error"]["param"] == name, r.text
    r = post(srv, "/v1/embeddings", {"model": "iir/echo-embed", "input": [[1.0, 2.0]]})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 2
    r = post(srv, "/v1/embeddings", {"model": "iir/echo-embed", "input": "x", "dimensions": 8.0})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 8
    r = post(srv, "/v1/embeddings", {"model": "iir/echo-embed", "input": [[1.5]]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("input"), r.text


def test_local_model_speaks_every_chat_surface(srv: Server) -> None:
    r = post(srv, "/v1/responses", {"model": "tiny", "input": "hello local"})
    assert r.status_code == 200, r.text
    validate(r.json(), "Response")
    assert r.json()["output"][0]["content"][0]["text"].strip() == "hello local"
    r = httpx.post(
        srv.url + "/v1/messages",
        json={"model": "tiny", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": srv.key},
    )
    assert r.status_code == 200 and r.json()["content"][0]["text"].strip() == "hi"


# --- capabilities ------------------------------------------------------------------------------------


def test_models_list_their_capabilities(srv: Server) -> None:
    body = httpx.get(srv.url + "/v1/models", headers=srv.auth).json()
    validate(body, "ListModelsResponse")
    caps = {m["id"]: m["capabilities"] for m in body["data"]}
    chat = ["chat", "completions", "messages", "responses"]
    assert caps["iir/echo"] == chat and caps["tiny"] == chat
    assert caps["iir/echo-embed"] == caps["embedder"] == ["embeddings"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
        ("/v1/responses", {"input": "x"}),
        ("/v1/completions", {"prompt": "x"}),
        ("/v1/messages", {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    ],
)
@pytest.mark.parametrize("model", ["iir/echo-embed", "embedder"])
def test_a_model_that_cannot_serve_a_route_is_404(
    srv: Server, path: str, body: dict[str, Any], model: str
) -> None:
    """As OpenAI answers a model used on a route it does not serve: the request is well formed
    (the document allows it), the model has no such route."""
    r = post(srv, path, {"model": model, **body})
    assert r.status_code == 404, r.text
    text = orjson.dumps(r.json()).decode()
    assert f"cannot serve {path}" in text and "/v1/embeddings" in text
    for chat_model in ("tiny", "iir/echo"):
        r = post(srv, "/v1/embeddings", {"model": chat_model, "input": "0"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_supported"
        assert r.json()["error"]["param"] == "model"
        validate_error(r.json())


# --- limits -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "small", "big"),
    [
        (
            "/v1/embeddings",
            {"model": "iir/echo-embed", "input": "hello there"},
            {"model": "iir/echo-embed", "input": ["word " * 30, "word " * 30]},
        ),
        (
            "/v1/completions",
            {"model": "iir/echo", "prompt": "hello there", "max_tokens": 100},
            {"model": "iir/echo", "prompt": "word " * 300},
        ),
    ],
)
def test_limits_hold(path: str, small: dict[str, Any], big: dict[str, Any]) -> None:
    env = {"IIR_MAX_PROMPT_TOKENS": "50", "IIR_RATE_LIMIT_TPM_PER_KEY": "400"}
    with Server(env=env) as s:
        r = post(s, path, big)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        first = post(s, path, small)
        second = post(s, path, small)
        assert first.status_code == second.status_code == 200
        left = int(first.headers["x-ratelimit-remaining-tokens"])
        after = int(second.headers["x-ratelimit-remaining-tokens"])
        used = first.json()["usage"]["total_tokens"]
        # The second found the first's reservation settled to what it used.
        assert left - after < 40 and used > 0
        if path == "/v1/completions":
            huge = post(s, path, {**small, "max_tokens": 5000})
            assert huge.status_code == 429 and "Request too large" in huge.json()["detail"]
        else:
            assert left - after > 0


# --- declaring and finding local embedding models -------------------------------------------------


def test_local_models_declare_their_runner() -> None:
    from iir.core.settings import ConfigError, load_settings

    s = load_settings(
        {"IIR_API_KEY": "k" * 32, "IIR_LOCAL_MODELS": "a=/m/a#embed, BAAI/bge-m3#embed"}
    )
    assert s.local_models == (("a", "/m/a#embed"), ("BAAI/bge-m3", "BAAI/bge-m3#embed"))
    with pytest.raises(ConfigError, match="IIR_LOCAL_MODELS"):
        load_settings({"IIR_API_KEY": "k" * 32, "IIR_LOCAL_MODELS": "a=/m/a#pool"})


@pytest.mark.parametrize(
    ("files", "architectures", "runner"),
    [
        ({}, ["LlamaForCausalLM"], "generate"),
        ({}, ["GPT2LMHeadModel"], "generate"),
        ({}, ["BertModel"], "embed"),
        ({}, ["XLMRobertaModel"], "embed"),
        ({"modules.json": "[]"}, ["Qwen3ForCausalLM"], "embed"),
        ({}, ["BertForSequenceClassification"], "generate"),
    ],
)
def test_model_folders_say_whether_they_embed(
    tmp_path: Any, files: dict[str, str], architectures: list[str], runner: str
) -> None:
    from iir.backends.local.modeldir import scan

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(orjson.dumps({"architectures": architectures}).decode())
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    for name, text in files.items():
        (folder / name).write_text(text)
    found, _ = scan(tmp_path)
    assert [f.runner for f in found] == [runner]
