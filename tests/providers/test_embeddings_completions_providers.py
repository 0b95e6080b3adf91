"""Embeddings and legacy completions on OpenAI and OpenAI-compatible providers: passed through
as the client sent them (scrubbed), with the provider's model id."""

from __future__ import annotations

import openai
import pytest

from ..harness import Server
from ..schemas import validate
from .conftest import provider_env
from .fakes import FakeProvider, Fault


@pytest.mark.parametrize("model", ["openai/text-embedding-3-small", "openllama/nomic-embed-text"])
def test_embeddings_pass_through(
    model: str, sdk: openai.OpenAI, fakes: dict[str, FakeProvider]
) -> None:
    out = sdk.embeddings.create(model=model, input=["one", "three"], dimensions=6)
    assert [len(d.embedding) for d in out.data] == [6, 6] and out.model == model
    assert out.usage.prompt_tokens == 6  # the provider's own count
    sent = fakes[model.split("/")[0]].chat_requests()[-1]
    assert sent.path == "/v1/embeddings"
    assert sent.body == {
        "model": model.split("/", 1)[1],
        "input": ["one", "three"],
        "dimensions": 6,
    }
    floats = sdk.embeddings.create(model=model, input="abc", encoding_format="float")
    validate(floats.model_dump(exclude_unset=True), "CreateEmbeddingResponse")


def test_embedding_models_serve_only_embeddings(iir: Server, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="cannot serve /v1/chat/completions"):
        sdk.chat.completions.create(
            model="openai/text-embedding-3-small", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.NotFoundError, match="cannot serve /v1/embeddings"):
        sdk.embeddings.create(model="anthropic/claude-x", input="x")
    caps = {m.id: m.model_extra["capabilities"] for m in sdk.models.list().data}  # type: ignore[index]
    assert caps["openai/fake-large"] == ["chat", "completions", "messages", "responses"]
    assert caps["anthropic/fake-large"] == ["chat", "messages", "responses"]


def test_embeddings_fall_back(fakes: dict[str, FakeProvider]) -> None:
    """A provider failing before it answers yields to the model's fallback (IIR_FALLBACKS)."""
    env = {
        **provider_env(fakes),
        "IIR_UPSTREAM_RETRIES": "0",
        "IIR_FALLBACKS": "openai/text-embedding-3-small=openllama/nomic-embed-text",
    }
    with Server(env=env) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key=s.key, max_retries=0)
        fakes["openai"].always = Fault("status", status=503)
        out = client.embeddings.create(
            model="openai/text-embedding-3-small", input="hello", encoding_format="float"
        )
        assert out.model == "openllama/nomic-embed-text"
        assert fakes["openai"].chat_requests() and fakes["openllama"].chat_requests()


@pytest.mark.parametrize("model", ["openai/gpt-3.5-turbo-instruct", "openllama/fake-small"])
@pytest.mark.parametrize("stream", [False, True])
def test_completions_pass_through(
    model: str, stream: bool, sdk: openai.OpenAI, fakes: dict[str, FakeProvider]
) -> None:
    if stream:
        chunks = list(
            sdk.completions.create(
                model=model,
                prompt=["hello", "again"],
                stream=True,
                stream_options={"include_usage": True},
                suffix="!",
            )
        )
        texts: dict[int, str] = {}
        for ch in chunks:
            for c in ch.choices:
                texts[c.index] = texts.get(c.index, "") + c.text
        assert texts == {0: "You said: hello", 1: "You said: again"}
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    else:
        out = sdk.completions.create(model=model, prompt=["hello", "again"], suffix="!")
        validate(out.model_dump(exclude_unset=True), "CreateCompletionResponse")
        assert [c.text for c in out.choices] == ["You said: hello", "You said: again"]
        assert out.model == model
    sent = fakes[model.split("/")[0]].chat_requests()[-1]
    assert sent.path == "/v1/completions" and sent.body["prompt"] == ["hello", "again"]
    assert sent.body["suffix"] == "!" and sent.body["model"] == model.split("/", 1)[1]
    assert sent.body.get("stream", False) is stream


def test_completions_are_not_for_anthropic(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="cannot serve /v1/completions"):
        sdk.completions.create(model="anthropic/claude-x", prompt="x")
