"""Fake providers and IIR servers pointed at them, shared by the provider tests."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from ..harness import Server
from .fakes import FakeProvider

KEYS = {
    "openai": "sk-openai-SECRET-0a1b2c3d4e5f",
    "anthropic": "sk-ant-SECRET-9z8y7x6w5v4u",
    "grok": "xai-SECRET-1q2w3e4r5t6y",
    "openrouter": "sk-or-SECRET-7u8i9o0p1a2s",
    "openllama": "llama-SECRET-3d4f5g6h7j8k",
}
PROVIDERS = ("openai", "anthropic", "grok", "openrouter", "openllama")


@pytest.fixture(scope="session")
def fakes() -> Iterator[dict[str, FakeProvider]]:
    out = {
        name: FakeProvider("anthropic" if name == "anthropic" else "openai", key=KEYS[name])
        for name in PROVIDERS
    }
    for fake in out.values():
        fake.start()
    yield out
    for fake in out.values():
        fake.stop()


def provider_env(fakes: dict[str, FakeProvider]) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": KEYS["openai"],
        "IIR_OPENAI_BASE_URL": fakes["openai"].url,
        "ANTHROPIC_API_KEY": KEYS["anthropic"],
        "IIR_ANTHROPIC_BASE_URL": fakes["anthropic"].url,
        "GROK_API_KEY": KEYS["grok"],  # the alias; XAI_API_KEY is the main name
        "IIR_GROK_BASE_URL": fakes["grok"].url,
        "OPENROUTER_API_KEY": KEYS["openrouter"],
        "IIR_OPENROUTER_BASE_URL": fakes["openrouter"].url,
        "OPENLLAMA_API_KEY": KEYS["openllama"],
        "IIR_OPENLLAMA_BASE_URL": fakes["openllama"].url,
    }


@pytest.fixture(scope="session")
def iir(fakes: dict[str, FakeProvider]) -> Iterator[Server]:
    """IIR with every provider configured, fast back-off, short timeouts, a breaker that won't trip."""
    env = {
        **provider_env(fakes),
        "IIR_UPSTREAM_RETRIES": "2",
        "IIR_UPSTREAM_BACKOFF_BASE": "0.01",
        "IIR_UPSTREAM_BACKOFF_MAX": "0.05",
        "IIR_UPSTREAM_FIRST_BYTE_TIMEOUT": "2",
        "IIR_UPSTREAM_IDLE_TIMEOUT": "1",
        "IIR_BREAKER_MIN_REQUESTS": "100000",
        "IIR_FALLBACKS": (
            "openai/flaky=nowhere/model|anthropic/claude-fallback;"
            "grok/down=nowhere/model|openrouter/vendor/backup"
        ),
    }
    with Server(env=env) as srv:
        yield srv


@pytest.fixture(scope="session")
def sdk(iir: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=iir.url + "/v1", api_key=iir.key, max_retries=0, timeout=30)


@pytest.fixture(autouse=True)
def _clean_fakes(fakes: dict[str, FakeProvider]) -> Iterator[None]:
    for fake in fakes.values():
        fake.reset()
    yield
    for fake in fakes.values():
        fake.reset()
