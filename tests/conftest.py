from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, settings

from .harness import Server

# Property tests check behaviour, never speed: the machines that run them are shared, so a slow
# example must not fail a run (speed lives in bench/).
settings.register_profile(
    "iir", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
settings.load_profile("iir")


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """A shared IIR server with default settings (tests must not change its state)."""
    with Server(env={"IIR_ALLOWED_KEYS": "second-key-0123456789abcdef0123456789abcdef"}) as srv:
        yield srv


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.key, max_retries=0)


# Reports that tests want shown at the end of every run, also without ``-s`` (the routing
# evaluation's confusion matrix): tests append text through the ``terminal_report`` fixture.
_REPORTS = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def terminal_report(request: pytest.FixtureRequest) -> list[str]:
    return request.config.stash.setdefault(_REPORTS, [])


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    for text in config.stash.get(_REPORTS, []):
        terminalreporter.write_sep("-", text.splitlines()[0])
        for line in text.splitlines()[1:]:
            terminalreporter.write_line(line)
