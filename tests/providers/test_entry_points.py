"""Every entry point that runs a model takes the same steps: what leaves the box is scrubbed, and
the prompt cap and the per-key token budget refuse and count alike.

The assertions look at the bytes a fake provider received, not at the answers (which are
scrubbed on the way out anyway).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from ..harness import Server
from ..secret_samples import make
from .fakes import FakeProvider, Fault

PROVIDER_KEY = "sk-openai-SECRET-entry-0a1b2c3d4e5f"
ENV_SECRET = "deploy-" + "Zq8" * 10  # a value of a secret variable: no rule knows its shape
MODEL = "openai/fake-small"

GITHUB = make("github_token", 11)
AWS = make("aws_access_key_id", 12)
OPENAI = make("openai_key", 13)
ANTHROPIC = make("anthropic_key", 14)
SLACK = make("slack_token", 15)
JWT = make("jwt", 16)
SECRETS = [GITHUB, AWS, OPENAI, ANTHROPIC, SLACK, JWT, ENV_SECRET]


def messages_with_secrets() -> list[dict[str, Any]]:
    """A secret in every place a chat request can carry one."""
    return [
        {"role": "system", "content": f"You deploy with {AWS}."},
        {
            "role": "user",
            "name": f"bot-{ENV_SECRET}",
            "content": [{"type": "text", "text": f"my token is {GITHUB}"}],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "deploy",
                        "arguments": orjson.dumps({"key": OPENAI}).decode(),
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": f"used {ANTHROPIC} and {JWT}"},
        {"role": "user", "content": f"deploy with {SLACK} please"},
    ]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider("openai", key=PROVIDER_KEY) as f:
        yield f


def _server(fake: FakeProvider, **env: str) -> Server:
    return Server(
        env={
            "OPENAI_API_KEY": PROVIDER_KEY,
            "IIR_OPENAI_BASE_URL": fake.url,
            "IIR_ALLOW_INSECURE_UPSTREAM": "true",
            "DEPLOY_TOKEN": ENV_SECRET,
            "IIR_UPSTREAM_RETRIES": "0",
            **env,
        }
    )


@pytest.fixture(scope="module")
def srv(fake: FakeProvider) -> Iterator[Server]:
    with _server(fake) as s:
        yield s


# --- the entry points, each run to its end -------------------------------------------------------


def _wait_job(c: httpx.Client, srv: Server, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = c.get(f"/v1/async/chat/completions/{job_id}?wait=5", headers=srv.auth)
        if r.headers["x-iir-job-status"] in ("succeeded", "failed", "cancelled"):
            return {"status": r.headers["x-iir-job-status"], "body": r.json()}
    raise AssertionError(f"job {job_id} did not end")


def chat_sync(c: httpx.Client, srv: Server, body: dict[str, Any]) -> httpx.Response:
    return c.post("/v1/chat/completions", json=body, headers=srv.auth)


def chat_stream(c: httpx.Client, srv: Server, body: dict[str, Any]) -> httpx.Response:
    r = c.post("/v1/chat/completions", json={**body, "stream": True}, headers=srv.auth)
    r.read()
    return r


def chat_async(c: httpx.Client, srv: Server, body: dict[str, Any]) -> httpx.Response:
    r = c.post("/v1/async/chat/completions", json=body, headers=srv.auth)
    if r.status_code == 202:
        job = _wait_job(c, srv, r.json()["job_id"])
        assert job["status"] == "succeeded", job
    return r


def infer_sync(c: httpx.Client, srv: Server, body: dict[str, Any]) -> httpx.Response:
    rest = {k: v for k, v in body.items() if k not in ("model", "messages")}
    return c.post(
        "/infer",
        json={"model": body["model"], "input": {"messages": body["messages"]}, **rest},
        headers=srv.auth,
    )


def infer_async(c: httpx.Client, srv: Server, body: dict[str, Any]) -> httpx.Response:
    rest = {k: v for k, v in body.items() if k not in ("model", "messages")}
    r = c.post(
        "/infer",
        json={
            "model": body["model"],
            "input": {"messages": body["messages"]},
            "async_": True,
            **rest,
        },
        headers=srv.auth,
    )
    if r.status_code == 202:
        job = _wait_job(c, srv, r.json()["job_id"])
        assert job["status"] == "succeeded", job
    return r


ENTRY_POINTS: dict[str, Callable[[httpx.Client, Server, dict[str, Any]], httpx.Response]] = {
    "chat": chat_sync,
    "chat-stream": chat_stream,
    "async-chat": chat_async,
    "infer": infer_sync,
    "infer-async": infer_async,
}
ACCEPTED = {"chat": 200, "chat-stream": 200, "async-chat": 202, "infer": 200, "infer-async": 202}


# --- scrubbing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_no_secret_reaches_the_provider(entry: str, srv: Server, fake: FakeProvider) -> None:
    fake.reset()
    body = {"model": MODEL, "messages": messages_with_secrets(), "max_tokens": 20}
    with srv.client() as c:
        r = ENTRY_POINTS[entry](c, srv, body)
    assert r.status_code == ACCEPTED[entry], r.text
    sent = fake.chat_requests()
    assert len(sent) == 1, "the request must have reached the provider"
    raw = orjson.dumps(sent[0].body).decode()
    leaked = [s for s in SECRETS if s in raw]
    assert not leaked, f"{entry} sent secrets to the provider: {leaked}"
    # What was scrubbed is still there, in place: the provider saw the conversation.
    assert raw.count("REDACTED") >= len(SECRETS)
    assert "deploy with" in raw
    # Nor does anything the box keeps: the job database (with its write-ahead log) and the log.
    kept = b"".join(f.read_bytes() for f in [*srv.data_dir.rglob("*"), srv.log_path] if f.is_file())
    stored = [s for s in SECRETS if s.encode() in kept]
    assert not stored, f"{entry} kept secrets on the box: {stored}"
    if entry.endswith("async"):
        assert b"deploy with" in kept, "the job must have been stored"


# --- every family of the rule table, both ways ---------------------------------------------------

#: An operator's rule (gitleaks' format), loaded through IIR_SCRUB_RULES_FILE.
TEAM_RULE = """
[[rules]]
id = "corp-api-token"
regex = '''\\b(corp_[a-z0-9]{32})\\b'''
keywords = ["corp_"]
"""
CORP = "corp_7f3kq9x2m4v8b1n6c5z0w3e7r2t9y4u1"


@pytest.fixture(scope="module")
def ruled(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    rules = tmp_path_factory.mktemp("rules") / "gitleaks.toml"
    rules.write_text(TEAM_RULE)
    with _server(fake, IIR_SCRUB_RULES_FILE=str(rules)) as s:
        yield s


def _family_texts() -> tuple[list[str], list[str], list[str]]:
    """Every true positive's text, the secrets in them, and every false positive's text."""
    from ..scrub_table import fixtures

    tps = [fx for fx in fixtures() if fx.positive]
    secrets = [p for fx in tps for p, secret in fx.parts if secret]
    return [fx.text for fx in tps], secrets, [fx.text for fx in fixtures() if not fx.positive]


@pytest.mark.parametrize("entry", ["chat", "chat-stream"])
def test_no_family_of_the_table_reaches_the_provider(
    entry: str, ruled: Server, fake: FakeProvider
) -> None:
    """Each true positive in its own message: none of its secrets leaves the box; each false
    positive arrives as it was written."""
    tps, secrets, fps = _family_texts()
    fake.reset()
    messages = [{"role": "user", "content": t} for t in [*tps, f"token {CORP} here", *fps]]
    with ruled.client() as c:
        r = ENTRY_POINTS[entry](c, ruled, {"model": MODEL, "messages": messages, "max_tokens": 5})
    assert r.status_code == 200, r.text
    [sent] = fake.chat_requests()
    got = [m["content"] for m in sent.body["messages"]]
    assert len(got) == len(messages)
    leaked = [s for s in [*secrets, CORP] if any(s in g for g in got[: len(tps) + 1])]
    assert not leaked, leaked
    assert got[len(tps)] == "token REDACTED here"
    assert got[len(tps) + 1 :] == fps


def test_no_family_of_the_table_reaches_the_client(ruled: Server, fake: FakeProvider) -> None:
    """A provider that answers with every true positive, streamed in small pieces that split
    secrets: the client reads none of them."""
    tps, secrets, _ = _family_texts()
    fake.reset()
    fake.reply = "\n".join([*tps, CORP])
    fake.chunk_chars = 7
    body = {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "stream": True}
    with ruled.client() as c:
        r = chat_stream(c, ruled, body)
    assert r.status_code == 200
    text = "".join(
        (chunk["choices"][0]["delta"].get("content") or "")
        for line in r.text.splitlines()
        if line.startswith("data: {")
        for chunk in [orjson.loads(line[6:])]
        if chunk.get("choices")
    )
    assert text.count("REDACTED") >= len(tps)
    leaked = [s for s in [*secrets, CORP] if s in text]
    assert not leaked, leaked


# --- the prompt cap ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(fake: FakeProvider) -> Iterator[Server]:
    with _server(fake, IIR_MAX_PROMPT_TOKENS="50") as s:
        yield s


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_the_prompt_cap_holds_on_every_entry_point(
    entry: str, capped: Server, fake: FakeProvider
) -> None:
    fake.reset()
    long = {"model": MODEL, "messages": [{"role": "user", "content": "word " * 300}]}
    with capped.client() as c:
        r = ENTRY_POINTS[entry](c, capped, long)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "context_length_exceeded"
        assert fake.chat_requests() == [], "a refused request must not reach the provider"
        short = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
        assert ENTRY_POINTS[entry](c, capped, short).status_code == ACCEPTED[entry]


# --- the per-key token budget --------------------------------------------------------------------

TPM = 100_000


def _remaining(r: httpx.Response) -> int:
    return int(r.headers["x-ratelimit-remaining-tokens"])


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_the_token_budget_refuses_and_refunds_on_every_entry_point(
    entry: str, fake: FakeProvider
) -> None:
    """A request reserves prompt + max output; what it did not use comes back once it ends, and
    a request larger than the whole budget is refused before anything runs."""
    fake.reset()
    with _server(fake, IIR_RATE_LIMIT_TPM_PER_KEY=str(TPM)) as s, s.client() as c:
        big = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": TPM * 2,
        }
        r = ENTRY_POINTS[entry](c, s, big)
        assert r.status_code == 429, r.text
        assert "exceed the limit" in r.json()["error"]["message"]
        assert fake.chat_requests() == []

        reserve = 30_000
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        first = ENTRY_POINTS[entry](c, s, {**body, "max_tokens": reserve})
        assert first.status_code == ACCEPTED[entry], first.text
        after_first = _remaining(first)
        assert after_first <= TPM - reserve  # the whole reservation was held
        # The first request has ended (jobs were waited for); it used a few dozen tokens, so
        # nearly all of its reservation is back before the second one reserves again.
        second = ENTRY_POINTS[entry](c, s, {**body, "max_tokens": reserve})
        assert second.status_code == ACCEPTED[entry], second.text
        refunded = _remaining(second) - (TPM - 2 * reserve)
        assert refunded > reserve * 0.9, f"only {refunded} of {reserve} tokens came back"


def test_a_failed_request_gives_its_reservation_back(fake: FakeProvider) -> None:
    fake.reset()
    with _server(fake, IIR_RATE_LIMIT_TPM_PER_KEY=str(TPM)) as s, s.client() as c:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 40_000,
        }
        fake.faults.append(Fault("status", status=500, message="boom"))
        failed = chat_sync(c, s, body)
        assert failed.status_code == 502, failed.text
        ok = chat_sync(c, s, body)
        assert ok.status_code == 200
        # Without the refund the failed request's 40,000 would still be held.
        assert _remaining(ok) > TPM - 40_000 - 5_000


def test_a_stream_the_client_left_settles_what_was_produced(fake: FakeProvider) -> None:
    fake.reset()
    with _server(fake, IIR_RATE_LIMIT_TPM_PER_KEY=str(TPM)) as s, s.client() as c:
        fake.chunk_chars = 1
        fake.reply = "x" * 400
        fake.faults.append(Fault("stall", at=5))
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 40_000,
            "stream": True,
        }
        with c.stream("POST", "/v1/chat/completions", json=body, headers=s.auth) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if '"content":"x"' in line:
                    break  # the first piece arrived: leave
        assert fake.wait_cancelled(1)
        fake.reset()
        after = chat_sync(c, s, {**body, "stream": False, "max_tokens": 10})
        assert _remaining(after) > TPM - 5_000


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_deeply_nested_body_is_a_400(entry: str, srv: Server, fake: FakeProvider) -> None:
    """Nesting deeper than the scrubber walks is refused as a bad request, never a 500."""
    fake.reset()
    deep: Any = "x"
    for _ in range(600):
        deep = {"k": deep}
    tool = {"type": "function", "function": {"name": "f", "parameters": deep}}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    with srv.client() as c:
        r = ENTRY_POINTS[entry](c, srv, body)
    assert r.status_code == 400, r.text
    assert "nested" in r.json()["error"]["message"]
    assert fake.chat_requests() == []
    assert "Traceback" not in srv.logs()
