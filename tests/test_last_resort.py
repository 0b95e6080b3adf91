"""Routing's last resort (``IIR_ROUTING_LAST_RESORT``): tried after every routed candidate, alone
when no policy model can serve. ``make run``'s development env file sets it to iir/echo, so that
``model: "auto"`` answers on a fresh box; without it (a production install) such a request is
still a 503."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from dotenv import dotenv_values

from iir.backends.echo import EchoBackend
from iir.backends.registry import ModelRegistry
from iir.core.errors import ApiError
from iir.core.protocol import parse_chat_request
from iir.core.settings import ConfigError, load_settings
from iir.policy.routing.router import Router
from iir.policy.routing.rules import DEFAULT_FILE, load_policy, parse_policy

from .harness import IIR, REPO, Server
from .routing_eval import FakeRemote

ROUTE_HEADERS = ("x-iir-route-model", "x-iir-route-strategy", "x-iir-route-category")


def chat(text: str) -> object:
    return parse_chat_request({"model": "auto", "messages": [{"role": "user", "content": text}]})


# --- the router -------------------------------------------------------------------------------


def test_alone_when_no_policy_model_is_available() -> None:
    bare = ModelRegistry([EchoBackend()])  # a fresh box: no provider, no local model
    with pytest.raises(ApiError) as err:
        Router(load_policy(DEFAULT_FILE), bare).decide(chat("Hello!"))  # type: ignore[arg-type]
    assert err.value.status == 503
    assert "none of the policy's models is available" in err.value.message
    d = Router(load_policy(DEFAULT_FILE), bare, last_resort="iir/echo").decide(chat("Hello!"))  # type: ignore[arg-type]
    assert d.candidates == ["iir/echo"]
    assert d.reason == "last resort: none of the policy's models is available"
    assert d.category.name == "chat" and d.strategy == "local-first"


def test_after_every_routed_candidate_and_whatever_the_policy_says() -> None:
    policy = parse_policy(
        "[[models]]\nname = 'cheap/mini'\ncontext_length = 128000\n"
        "quality = { default = 3, math = 0 }",
        "test",
    )
    remote = FakeRemote()
    registry = ModelRegistry([EchoBackend(), remote])
    router = Router(policy, registry, last_resort="iir/echo")
    d = router.decide(chat("Hello!"))  # type: ignore[arg-type]
    assert d.candidates == ["cheap/mini", "iir/echo"]  # a fallback after the policy's choice
    d = router.decide(chat("Solve 2x + 3 = 7"))  # type: ignore[arg-type]
    assert d.candidates == ["iir/echo"]
    assert d.reason.startswith("last resort: policy forbids every option (cheap/mini: policy")
    remote.circuits["cheap/mini"] = "open"
    d = router.decide(chat("Hello!"))  # type: ignore[arg-type]
    assert (d.candidates, d.reason) == (["iir/echo"], "last resort: all circuits are open")
    # a model the client named runs alone (the policy's explicit_fallbacks is off)
    assert router.decide(chat("Hi"), explicit="cheap/mini").candidates == ["cheap/mini"]  # type: ignore[arg-type]


def test_not_twice_and_not_when_nothing_serves_it() -> None:
    registry = ModelRegistry([EchoBackend(), FakeRemote()])
    policy = parse_policy(
        "[[models]]\nname = 'iir/echo'\nlocal = true\ncontext_length = 4096\n"
        "[[models]]\nname = 'big/pro'\ncontext_length = 128000",
        "test",
    )
    d = Router(policy, registry, last_resort="iir/echo").decide(chat("Hello!"))  # type: ignore[arg-type]
    assert d.candidates == ["iir/echo", "big/pro"]  # already there: not added again
    unserved = Router(load_policy(DEFAULT_FILE), registry, last_resort="nowhere/model")
    with pytest.raises(ApiError) as err:
        unserved.decide(chat("Hello!"))  # type: ignore[arg-type]
    assert err.value.status == 503


def test_the_setting() -> None:
    assert load_settings({"IIR_API_KEY": "k" * 32}).routing_last_resort is None
    s = load_settings({"IIR_API_KEY": "k" * 32, "IIR_ROUTING_LAST_RESORT": " iir/echo "})
    assert s.routing_last_resort == "iir/echo"
    blank = load_settings({"IIR_API_KEY": "k" * 32, "IIR_ROUTING_LAST_RESORT": " "})
    assert blank.routing_last_resort is None  # an emptied line in the env file turns it off
    with pytest.raises(ConfigError, match="IIR_ROUTING_LAST_RESORT"):
        load_settings({"IIR_API_KEY": "k" * 32, "IIR_ROUTING_LAST_RESORT": "a\x01b"})


# --- make run's env file, in a real server --------------------------------------------------------


@pytest.fixture(scope="module")
def dev_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The env file ``make run`` writes, made by the Makefile's own rule (in a folder of its own,
    with this interpreter's ``iir``, and without reinstalling anything)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    data = tmp_path_factory.mktemp("var")
    target = data / "dev.env"
    subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-s",
            "-o",
            ".venv/.installed",
            f"BIN={Path(IIR).parent}",
            f"DATA={data}",
            str(target),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert target.stat().st_mode & 0o077 == 0  # holds a key: the owner's only
    return target


def ask(srv: Server, model: str = "auto", **extra: object) -> httpx.Response:
    return httpx.post(
        srv.url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Hello!"}], **extra},
        headers=srv.auth,
        timeout=30,
    )


def test_make_run_env_file_answers_auto(dev_env: Path) -> None:
    values = dotenv_values(dev_env)
    assert values["IIR_ROUTING_LAST_RESORT"] == "iir/echo"
    key = values["IIR_API_KEY"]
    assert key and re.fullmatch(r"dev_[A-Za-z0-9]{40}", key)
    # The server reads the file itself (iir serve --env-file, as make run starts it).
    with Server(key=key, args=["--env-file", str(dev_env)]) as srv:
        r = ask(srv)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "Hello!"
        assert r.headers["x-iir-route-model"] == "iir/echo"
        assert all(h in r.headers for h in ROUTE_HEADERS)
        assert r.headers["x-iir-route-reason"] == (
            "last resort: none of the policy's models is available"
        )
        streamed = ask(srv, stream=True)
        assert streamed.status_code == 200 and streamed.headers["x-iir-route-model"] == "iir/echo"
        assert "data: [DONE]" in streamed.text
        route = httpx.post(
            srv.url + "/v1/route",
            json={"model": "auto", "messages": [{"role": "user", "content": "Hi"}]},
            headers=srv.auth,
            timeout=30,
        )
        assert route.json()["candidates"] == ["iir/echo"]


def test_without_it_a_fresh_server_answers_503(tmp_path: Path) -> None:
    # A production-style env file: a key and nothing else (what `iir keygen --env` prints).
    keygen = subprocess.run([IIR, "keygen", "--env"], capture_output=True, text=True, check=True)
    env_file = tmp_path / "iir.env"
    env_file.write_text(keygen.stdout)
    key = keygen.stdout.strip().removeprefix("IIR_API_KEY=")
    with Server(key=key, args=["--env-file", str(env_file)]) as srv:
        r = ask(srv)
        assert r.status_code == 503
        assert r.json()["detail"] == (
            "Classifier error: no model can serve this request: "
            "none of the policy's models is available"
        )
        assert ask(srv, model="iir/echo").status_code == 200
