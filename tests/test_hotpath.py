"""The Rust hot path through the real server: scrubbing both ways, token limits, rate limits."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest

from .harness import Server
from .providers.fakes import FakeProvider
from .schemas import validate, validate_error

OPENAI_KEY = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" * 2
ENV_SECRET = "correct-horse-battery-staple-42"
UPSTREAM_KEY = "sk-upstream-0a1b2c3d4e5f6a7b8c9d"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider("openai", key=UPSTREAM_KEY) as f:
        yield f


@pytest.fixture(scope="module")
def srv(fake: FakeProvider) -> Iterator[Server]:
    env = {
        "DEPLOY_TOKEN": ENV_SECRET,
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "IIR_OPENAI_BASE_URL": fake.url,
        "IIR_UPSTREAM_RETRIES": "0",
    }
    with Server(env=env) as s:
        yield s


def _chat(srv: Server, content: str, **extra: object) -> httpx.Response:
    body = {"model": "iir/echo", "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(srv.url + "/v1/chat/completions", json=body, headers=srv.auth, timeout=30)


def test_request_secrets_never_reach_a_backend(srv: Server) -> None:
    text = (
        f"token {OPENAI_KEY} env {ENV_SECRET} mine {srv.key} "
        "url https://bob:hunter2pass@db.local/x and password=s3cr3tvalue! keep 3f2504e0-4f89-11d3-9a0c-0305e82c3301"
    )
    r = _chat(srv, text)
    assert r.status_code == 200
    out = r.json()["choices"][0]["message"]["content"]
    for secret in (OPENAI_KEY, ENV_SECRET, srv.key, "hunter2pass", "s3cr3tvalue!"):
        assert secret not in out
    assert out.count("REDACTED") >= 5
    assert "https://bob:REDACTED@db.local/x" in out
    assert "3f2504e0-4f89-11d3-9a0c-0305e82c3301" in out  # UUIDs survive
    metrics = httpx.get(srv.url + "/metrics").text
    assert 'iir_secrets_redacted_total{direction="request"' in metrics
    assert OPENAI_KEY not in metrics and ENV_SECRET not in metrics


def test_secrets_leaving_for_a_provider_are_scrubbed(srv: Server, fake: FakeProvider) -> None:
    fake.reset()
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=srv.key, max_retries=0)
    client.chat.completions.create(
        model="openai/fake-large",
        messages=[
            {"role": "system", "content": f"deploy with {ENV_SECRET}"},
            {"role": "user", "content": [{"type": "text", "text": f"key {OPENAI_KEY}"}]},
        ],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    )
    sent = orjson.dumps(fake.chat_requests()[-1].body).decode()
    assert OPENAI_KEY not in sent and ENV_SECRET not in sent and "REDACTED" in sent
    assert fake.chat_requests()[-1].headers.get("authorization") == f"Bearer {UPSTREAM_KEY}"


def test_response_secrets_are_scrubbed(srv: Server, fake: FakeProvider) -> None:
    fake.reset()
    fake.reply = f"here it is: {OPENAI_KEY} and {ENV_SECRET} done"
    r = httpx.post(
        srv.url + "/v1/chat/completions",
        headers=srv.auth,
        timeout=30,
        json={"model": "openai/fake-large", "messages": [{"role": "user", "content": "?"}]},
    )
    body = r.json()
    validate(body, "CreateChatCompletionResponse")
    assert body["choices"][0]["message"]["content"] == "here it is: REDACTED and REDACTED done"


@pytest.mark.parametrize("chunk_chars", [1, 3, 7, 40])
def test_secrets_split_across_stream_chunks_are_scrubbed(
    srv: Server, fake: FakeProvider, chunk_chars: int
) -> None:
    fake.reset()
    fake.reply = f"A {OPENAI_KEY} B {ENV_SECRET} C -----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY----- D"
    fake.chunk_chars = chunk_chars
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=srv.key, max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="openai/fake-large", stream=True, messages=[{"role": "user", "content": "?"}]
        )
    )
    for ch in chunks:
        validate(ch.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == "A REDACTED B REDACTED C REDACTED D"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    fake.reset()


def test_error_messages_and_logs_hold_no_secret(srv: Server, fake: FakeProvider) -> None:
    from .providers.fakes import Fault

    fake.reset()
    fake.faults.append(
        Fault("status", status=400, message=f"bad key {OPENAI_KEY} for {ENV_SECRET}")
    )
    r = httpx.post(
        srv.url + "/v1/chat/completions",
        headers=srv.auth,
        timeout=30,
        json={"model": "openai/fake-large", "messages": [{"role": "user", "content": "x"}]},
    )
    err = r.json()
    validate_error(err)
    assert r.status_code == 400 and OPENAI_KEY not in r.text and ENV_SECRET not in r.text
    assert "REDACTED" in err["detail"]
    time.sleep(0.3)
    logs = srv.logs()
    for secret in (OPENAI_KEY, ENV_SECRET, srv.key, UPSTREAM_KEY):
        assert secret not in logs


def test_max_prompt_tokens() -> None:
    with Server(env={"IIR_MAX_PROMPT_TOKENS": "20"}) as s:
        ok = _chat(s, "short")
        assert ok.status_code == 200
        r = _chat(s, "word " * 50)
        body = r.json()
        validate_error(body)
        assert r.status_code == 400 and body["detail"] == "Request exceeds max token limit"
        assert body["error"]["code"] == "context_length_exceeded"
        client = openai.OpenAI(base_url=s.url + "/v1", api_key=s.key, max_retries=0)
        with pytest.raises(openai.BadRequestError, match="max token limit"):
            client.chat.completions.create(
                model="iir/echo", messages=[{"role": "user", "content": "x " * 100}]
            )


def test_per_key_request_limit_headers_and_429() -> None:
    env = {
        "IIR_RATE_LIMIT_RPM_PER_KEY": "3",
        "IIR_ALLOWED_KEYS": "other-key-0123456789abcdef0123456789abc",
    }
    with Server(env=env) as s:
        seen = []
        for _ in range(3):
            r = _chat(s, "hi")
            assert r.status_code == 200
            assert r.headers["x-ratelimit-limit-requests"] == "3"
            seen.append(int(r.headers["x-ratelimit-remaining-requests"]))
            assert re.fullmatch(
                r"\d+(\.\d+)?(ms|s)|\d+m\d+s", r.headers["x-ratelimit-reset-requests"]
            )
        assert seen == sorted(seen, reverse=True) and seen[-1] == 0
        r = _chat(s, "hi")
        body = r.json()
        validate_error(body)
        assert r.status_code == 429 and body["detail"] == "Rate limit exceeded"
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert int(r.headers["retry-after"]) >= 1
        other = httpx.get(
            s.url + "/v1/models",
            headers={"Authorization": "Bearer other-key-0123456789abcdef0123456789abc"},
        )
        assert other.status_code == 200  # limits are per key
        client = openai.OpenAI(base_url=s.url + "/v1", api_key=s.key, max_retries=0)
        with pytest.raises(openai.RateLimitError, match="Rate limit exceeded"):
            client.models.list()
        assert 'iir_ratelimited_total{scope="key_requests"}' in httpx.get(s.url + "/metrics").text


def test_per_key_token_limit_reserves_and_reconciles() -> None:
    with Server(env={"IIR_RATE_LIMIT_TPM_PER_KEY": "200"}) as s:
        r = _chat(s, "hello there", max_tokens=50)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-tokens"] == "200"
        used = r.json()["usage"]["total_tokens"]
        reserved = r.json()["usage"]["prompt_tokens"] + 50
        assert used < reserved - 40  # echo answers two words, far below 50
        assert int(r.headers["x-ratelimit-remaining-tokens"]) <= 200 - reserved
        # The first reservation was settled to its real usage before the second reserves: the
        # second sees 200 - used - reserved (plus refill), not 200 - 2 * reserved.
        r2 = _chat(s, "hello there", max_tokens=50)
        remaining = int(r2.headers["x-ratelimit-remaining-tokens"])
        assert remaining >= 200 - used - reserved - 1  # the limiter rounds down
        assert remaining > 200 - 2 * reserved + 40
        big = _chat(s, "x " * 10, max_tokens=5000)
        assert big.status_code == 429 and "Request too large" in big.json()["detail"]


def test_per_ip_limit_before_auth_and_forwarded_for() -> None:
    env = {"IIR_RATE_LIMIT_PER_IP": "2", "IIR_TRUSTED_PROXIES": "127.0.0.1"}
    with Server(env=env) as s:
        for _ in range(2):
            assert httpx.get(s.url + "/v1/models").status_code == 401
        r = httpx.get(s.url + "/v1/models")  # limited before auth is even looked at
        assert r.status_code == 429 and "retry-after" in r.headers
        validate_error(r.json())
        assert httpx.get(s.url + "/health").status_code == 200  # probes are never limited
        # Behind a trusted proxy each forwarded client has its own budget.
        h = {**s.auth, "X-Forwarded-For": "203.0.113.7"}
        assert httpx.get(s.url + "/v1/models", headers=h).status_code == 200
        h6 = {**s.auth, "X-Forwarded-For": "2001:db8::1"}
        assert httpx.get(s.url + "/v1/models", headers=h6).status_code == 200
        h6b = {**s.auth, "X-Forwarded-For": "2001:db8::2"}  # same /64: same budget
        assert httpx.get(s.url + "/v1/models", headers=h6b).status_code == 200
        assert httpx.get(s.url + "/v1/models", headers=h6b).status_code == 429
    with Server(env={"IIR_RATE_LIMIT_PER_IP": "1"}) as s:  # no trusted proxies: header ignored
        assert (
            httpx.get(
                s.url + "/v1/models", headers={**s.auth, "X-Forwarded-For": "1.2.3.4"}
            ).status_code
            == 200
        )
        assert (
            httpx.get(
                s.url + "/v1/models", headers={**s.auth, "X-Forwarded-For": "5.6.7.8"}
            ).status_code
            == 429
        )


def test_the_shipped_per_ip_limit_is_600_a_minute() -> None:
    """The harness turns the per-IP limit off; unset, the shipped default (600/min) applies."""
    with Server(env={"IIR_RATE_LIMIT_PER_IP": ""}) as s, s.client() as c:
        admitted = 0
        while admitted < 700:
            r = c.get("/v1/models", headers=s.auth)
            if r.status_code == 429:
                break
            assert r.status_code == 200, r.text
            admitted += 1
        # A full bucket of 600, plus whatever refilled (10 a second) while the loop ran.
        assert r.status_code == 429 and 600 <= admitted < 700, admitted
        validate_error(r.json())


def test_usage_is_counted_when_a_backend_reports_none(srv: Server, fake: FakeProvider) -> None:
    fake.reset()
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=srv.key, max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="openai/gpt-4o",
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "count these words"}],
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
