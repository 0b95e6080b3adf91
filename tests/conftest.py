from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from .harness import Server


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """A shared IIR server with default settings (tests must not change its state)."""
    with Server(env={"IIR_ALLOWED_KEYS": "second-key-0123456789abcdef"}) as srv:
        yield srv


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.key, max_retries=0)
