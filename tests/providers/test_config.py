"""Provider settings: bad values stop start-up with exit code 2 and name the variable."""

from __future__ import annotations

import os
import subprocess

import pytest

from iir.core.settings import ConfigError, load_settings

from ..harness import IIR, free_port

BASE = {"IIR_API_KEY": "k" * 32}


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"IIR_UPSTREAM_RETRIES": "many"}, "IIR_UPSTREAM_RETRIES"),
        ({"IIR_UPSTREAM_RETRIES": "11"}, "IIR_UPSTREAM_RETRIES"),
        ({"IIR_UPSTREAM_CONNECT_TIMEOUT": "0"}, "IIR_UPSTREAM_CONNECT_TIMEOUT"),
        ({"IIR_UPSTREAM_IDLE_TIMEOUT": "nan"}, "IIR_UPSTREAM_IDLE_TIMEOUT"),
        ({"IIR_UPSTREAM_FIRST_BYTE_TIMEOUT": "-1"}, "IIR_UPSTREAM_FIRST_BYTE_TIMEOUT"),
        ({"IIR_BREAKER_FAILURE_RATE": "1.5"}, "IIR_BREAKER_FAILURE_RATE"),
        ({"IIR_BREAKER_FAILURE_RATE": "0"}, "IIR_BREAKER_FAILURE_RATE"),
        ({"IIR_BREAKER_MIN_REQUESTS": "0"}, "IIR_BREAKER_MIN_REQUESTS"),
        ({"IIR_ANTHROPIC_MAX_TOKENS": "lots"}, "IIR_ANTHROPIC_MAX_TOKENS"),
        ({"IIR_OPENAI_BASE_URL": "ftp://example.com"}, "IIR_OPENAI_BASE_URL"),
        ({"IIR_OPENLLAMA_BASE_URL": "llama.lan:8080"}, "IIR_OPENLLAMA_BASE_URL"),
        ({"IIR_FALLBACKS": "openai/gpt-4o"}, "IIR_FALLBACKS"),
        ({"IIR_FALLBACKS": "openai/gpt-4o=|"}, "IIR_FALLBACKS"),
        ({"IIR_FALLBACKS": "a=b;a=c"}, "IIR_FALLBACKS"),
        ({"IIR_FALLBACKS": "a=b|a"}, "IIR_FALLBACKS"),
    ],
)
def test_bad_value_exits_2_naming_the_variable(env: dict[str, str], variable: str) -> None:
    full = {k: v for k, v in os.environ.items() if not k.startswith("IIR_")}
    full.update({**BASE, **env})
    done = subprocess.run(
        [IIR, "serve", "--port", str(free_port())],
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert variable in done.stderr and "Traceback" not in done.stderr


def test_fallbacks_format() -> None:
    s = load_settings(
        {
            **BASE,
            "IIR_FALLBACKS": " openai/gpt-4o = anthropic/claude-sonnet-4-5 | openllama/llama3 ;"
            "grok/grok-4=openrouter/x-ai/grok-4;",
        }
    )
    assert s.upstream.fallbacks == {
        "openai/gpt-4o": ("anthropic/claude-sonnet-4-5", "openllama/llama3"),
        "grok/grok-4": ("openrouter/x-ai/grok-4",),
    }
    assert load_settings(BASE).upstream.fallbacks == {}
    with pytest.raises(ConfigError, match="IIR_FALLBACKS"):
        load_settings({**BASE, "IIR_FALLBACKS": "=x"})
