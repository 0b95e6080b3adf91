"""The fault matrix: IIR against providers that fail or turn hostile, streamed and not.

Each fault gets the right status (502 bad answer, 503 circuit open, 504 timeout) or, once a
stream has started, an error frame; nothing hangs past the configured timeouts (the test client
waits far longer than they add up to); memory stays flat however large the provider's answer
claims to be; bad answers count against the circuit breaker; no redirect is followed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from iir.cli.doctor import FAIL, run_checks

from ..harness import Server, free_port
from ..schemas import validate, validate_error
from .conftest import KEYS
from .fakes import FakeProvider, Fault, prepare_bombs
from .test_providers import sse_bodies

CAP = 256 * 1024  # IIR_UPSTREAM_MAX_BYTES here; an SSE line may hold as much
BOMB = 256 * 1024 * 1024  # what the gzip bombs inflate to
HELLO = [{"role": "user", "content": "one two three four"}]
OPENAI = "openai/gpt-4o"
ANTHROPIC = "anthropic/claude-sonnet-4-5"
REFUSED = "openllama/llama3"  # its base URL is a port nothing listens on
#: The client's deadline: far above what the server's timeouts add up to (3 attempts of at most
#: 1 s connect + 2 s answer, plus back-off), so a hang shows up as a failure, not a slow pass.
DEADLINE = 30.0


class Fakes:
    def __init__(self) -> None:
        self.openai = FakeProvider("openai", key=KEYS["openai"])
        self.anthropic = FakeProvider("anthropic", key=KEYS["anthropic"])
        # Where the redirects point: it must never hear from IIR.
        self.elsewhere = FakeProvider("anthropic")

    def all(self) -> list[FakeProvider]:
        return [self.openai, self.anthropic, self.elsewhere]


def env_for(f: Fakes, **extra: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": KEYS["openai"],
        "IIR_OPENAI_BASE_URL": f.openai.url,
        "ANTHROPIC_API_KEY": KEYS["anthropic"],
        "IIR_ANTHROPIC_BASE_URL": f.anthropic.url,
        "OPENLLAMA_API_KEY": KEYS["openllama"],
        "IIR_OPENLLAMA_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        "IIR_ALLOW_INSECURE_UPSTREAM": "true",
        "IIR_UPSTREAM_MAX_BYTES": str(CAP),
        "IIR_UPSTREAM_CONNECT_TIMEOUT": "1",
        "IIR_UPSTREAM_FIRST_BYTE_TIMEOUT": "2",
        "IIR_UPSTREAM_IDLE_TIMEOUT": "1",
        "IIR_UPSTREAM_RETRIES": "2",
        "IIR_UPSTREAM_BACKOFF_BASE": "0.01",
        "IIR_UPSTREAM_BACKOFF_MAX": "0.05",
        "IIR_BREAKER_MIN_REQUESTS": "100000",
        **extra,
    }


@pytest.fixture(scope="module")
def ups() -> Iterator[Fakes]:
    prepare_bombs(BOMB)
    f = Fakes()
    for fake in f.all():
        fake.start()
    yield f
    for fake in f.all():
        fake.stop()


@pytest.fixture(scope="module")
def srv(ups: Fakes) -> Iterator[Server]:
    with Server(env=env_for(ups, IIR_MAX_ANSWER_BYTES="100000")) as s:
        yield s


@pytest.fixture(autouse=True)
def _reset(ups: Fakes) -> Iterator[None]:
    for fake in ups.all():
        fake.reset()
    yield
    for fake in ups.all():
        fake.reset()


def ask(srv: Server, model: str, stream: bool, **kw: Any) -> httpx.Response:
    body = {"model": model, "messages": HELLO, "stream": stream, **kw}
    with httpx.Client(base_url=srv.url, timeout=DEADLINE) as c:
        return c.post("/v1/chat/completions", json=body, headers=srv.auth)


def error_frame(r: httpx.Response) -> dict[str, Any]:
    """A stream that started, then failed: content first, then the error frame and [DONE]."""
    assert r.status_code == 200, r.text[:500]
    bodies = sse_bodies(r.text)
    assert bodies[-1] == "[DONE]"
    err = bodies[-2]
    validate_error(err)
    for b in bodies[:-2]:
        validate(b, "CreateChatCompletionStreamResponse")
    return err  # type: ignore[no-any-return]


# --- the matrix -------------------------------------------------------------------------------

#: id -> (fault, whether streamed, status, words in the message, upstream attempts)
STATUS_CASES: dict[str, tuple[Fault | None, bool, int, str, int]] = {
    "refused": (None, False, 502, "connection failed", 0),
    "refused-stream": (None, True, 502, "connection failed", 0),
    "reset": (Fault("reset"), False, 502, "connection failed", 3),
    "reset-stream": (Fault("reset"), True, 502, "connection failed", 3),
    "reset-mid-body": (Fault("reset_body"), False, 502, "connection failed", 3),
    "slow-first-byte": (Fault("stall_before"), False, 504, "did not answer in time", 1),
    "slow-first-byte-stream": (Fault("stall_before"), True, 504, "did not start streaming", 1),
    "slow-body": (Fault("trickle", seconds=0.2), False, 504, "did not answer in time", 1),
    "slow-body-stream": (Fault("trickle", seconds=0.2, at=0), True, 504, "did not start", 1),
    "oversized": (Fault("oversized", size=2 * CAP), False, 502, "larger than 262144 bytes", 1),
    "oversized-chunked": (
        Fault("oversized", size=2 * CAP, chunked=True),
        False,
        502,
        "larger than 262144 bytes",
        1,
    ),
    "gzip-bomb": (Fault("gzip_bomb", size=BOMB), False, 502, "larger than 262144 bytes", 1),
    "gzip-bomb-stream": (Fault("gzip_bomb", size=BOMB), True, 502, "longer than 262144", 1),
    "endless-line-stream": (Fault("endless_line", at=0), True, 502, "longer than 262144", 1),
    "redirect": (Fault("redirect"), False, 502, "HTTP 302 (redirects are not followed)", 1),
    "redirect-stream": (Fault("redirect"), True, 502, "HTTP 302 (redirects are not followed)", 1),
    "5xx-storm": (Fault("status", 500), False, 502, "HTTP 500", 3),
    "5xx-storm-stream": (Fault("status", 503), True, 502, "HTTP 503", 3),
    "wrong-content-type": (Fault("content_type"), False, 502, "not valid JSON", 1),
    "wrong-content-type-stream": (
        Fault("content_type"),
        True,
        502,
        "not an event stream (text/html): <html>",
        1,
    ),
    "invalid-json": (Fault("malformed"), False, 502, "not valid JSON", 1),
}


@pytest.mark.parametrize("case", list(STATUS_CASES))
def test_fault_before_the_answer_gets_its_status(srv: Server, ups: Fakes, case: str) -> None:
    fault, stream, status, words, attempts = STATUS_CASES[case]
    model = OPENAI
    if fault is None:
        model = REFUSED
    else:
        if fault.kind == "redirect":
            fault.location = ups.elsewhere.url + "/messages"
        ups.openai.always = fault
    r = ask(srv, model, stream)
    assert r.status_code == status, r.text[:500]
    body = r.json()
    validate_error(body)
    assert words in body["detail"], body
    assert len(ups.openai.chat_requests()) == attempts
    assert ups.elsewhere.requests == []
    for key in KEYS.values():
        assert key not in r.text


#: Faults that strike once the stream has started: id -> (fault, error type, words).
FRAME_CASES: dict[str, tuple[Fault, str, str]] = {
    "reset-mid-stream": (Fault("reset_mid"), "upstream_error", "connection lost"),
    "slow-body-mid-stream": (Fault("trickle", seconds=0.2), "timeout_error", "stalled"),
    "endless-line-mid-stream": (Fault("endless_line"), "upstream_error", "longer than 262144"),
    "invalid-json-mid-stream": (Fault("malformed"), "upstream_error", "not valid JSON"),
}


@pytest.mark.parametrize(
    ("case", "provider"),
    [(case, "openai") for case in FRAME_CASES]
    # the Anthropic fake has no malformed frame of its own
    + [(case, "anthropic") for case in FRAME_CASES if FRAME_CASES[case][0].kind != "malformed"],
)
def test_fault_mid_stream_ends_it_with_an_error_frame(
    srv: Server, ups: Fakes, case: str, provider: str
) -> None:
    fault, kind, words = FRAME_CASES[case]
    fault = Fault(**{**fault.__dict__})  # a copy: the Anthropic cases move where it strikes
    if provider == "anthropic":
        fault.at = 4  # past message_start, content_block_start and ping: after some text
    fake = ups.openai if provider == "openai" else ups.anthropic
    fake.faults.append(fault)
    err = error_frame(ask(srv, OPENAI if provider == "openai" else ANTHROPIC, True))
    assert err["error"]["type"] == kind and words in err["detail"], err
    assert len(fake.chat_requests()) == 1  # nothing retried once bytes went to the client


@pytest.mark.parametrize("stream", [False, True])
def test_the_answer_size_cap_applies_to_providers(srv: Server, ups: Fakes, stream: bool) -> None:
    """IIR_MAX_ANSWER_BYTES (100000 here) holds for a provider's answer like for echo's."""
    ups.openai.reply = "y" * 150_000
    ups.openai.chunk_chars = 10_000
    r = ask(srv, OPENAI, stream)
    if stream:
        err = error_frame(r)
    else:
        assert r.status_code == 400, r.text[:300]
        err = r.json()
        validate_error(err)
    assert err["error"]["code"] == "answer_too_large", err
    ups.openai.reply = "y" * 50_000
    assert ask(srv, OPENAI, stream).status_code == 200


# --- memory -----------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += _tree(int(child))
    return out


def peak_rss(srv: Server) -> int:
    """The largest peak resident size (VmHWM, bytes) of the server's processes."""
    assert srv.proc is not None
    peak = 0
    for pid in _tree(srv.proc.pid):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) * 1024)
    return peak


def test_memory_stays_flat_under_hostile_answers(ups: Fakes) -> None:
    """Gzip bombs of 256 MB, bodies twice the cap and endless lines, ten rounds each: the
    server's peak memory grows by far less than one bomb would need."""
    with Server(env=env_for(ups)) as s:
        for stream in (False, True):  # warm up: imports, pools, first requests
            assert ask(s, OPENAI, stream).status_code == 200
        before = peak_rss(s)
        for _ in range(10):
            for fault, stream in [
                (Fault("gzip_bomb", size=BOMB), False),
                (Fault("gzip_bomb", size=BOMB), True),
                (Fault("oversized", size=2 * CAP, chunked=True), False),
                (Fault("endless_line", at=0), True),
                (Fault("endless_line"), True),
            ]:
                ups.openai.faults.append(fault)
                r = ask(s, OPENAI, stream)
                assert r.status_code in (200, 502), r.text[:300]
        grown = peak_rss(s) - before
        assert grown < 64 * 1024 * 1024, f"peak memory grew by {grown} bytes"
        assert ask(s, OPENAI, False).status_code == 200


# --- the circuit breaker ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def breaker_srv(ups: Fakes) -> Iterator[Server]:
    env = env_for(
        ups,
        IIR_UPSTREAM_RETRIES="0",
        IIR_BREAKER_MIN_REQUESTS="4",
        IIR_BREAKER_FAILURE_RATE="0.5",
        IIR_BREAKER_OPEN_SECONDS="1",
        IIR_BREAKER_WINDOW="60",
    )
    with Server(env=env) as s:
        yield s


@pytest.mark.parametrize(
    ("fault", "stream"),
    [
        (Fault("status", 500), False),
        (Fault("reset"), True),
        (Fault("oversized", size=2 * CAP), False),
        (Fault("gzip_bomb", size=BOMB), False),
        (Fault("endless_line", at=0), True),
        (Fault("content_type"), True),
        (Fault("malformed"), False),
        (Fault("redirect"), False),
    ],
    ids=lambda v: v.kind if isinstance(v, Fault) else ("stream" if v else "json"),
)
def test_bad_answers_open_the_circuit_and_a_good_probe_closes_it(
    breaker_srv: Server, ups: Fakes, fault: Fault, stream: bool
) -> None:
    fake = ups.openai
    if fault.kind == "redirect":
        fault.location = ups.elsewhere.url + "/messages"
    fake.always = fault
    failed = 0
    while (r := ask(breaker_srv, OPENAI, stream)).status_code == 502:
        failed += 1
        assert failed <= 4, "four failures in four attempts did not open the circuit"
    assert r.status_code == 503 and r.json()["error"]["code"] == "circuit_open", r.text
    assert "retry-after" in r.headers
    assert failed >= 2  # at least half of the (at least four) attempts in the window
    assert len(fake.chat_requests()) == failed  # failing fast: nothing more reached the provider
    fake.always = None
    deadline = time.monotonic() + 10
    while (r := ask(breaker_srv, OPENAI, stream)).status_code == 503:
        assert time.monotonic() < deadline, "the circuit never let a probe through"
        time.sleep(0.2)
    assert r.status_code == 200  # the probe succeeded: closed again
    assert ask(breaker_srv, OPENAI, not stream).status_code == 200
    assert ups.elsewhere.requests == []


# --- redirects are never followed -------------------------------------------------------------


def test_model_list_redirect_does_not_carry_the_key_away(srv: Server, ups: Fakes) -> None:
    """A 302 from the model list used to be followed, and aiohttp strips only Authorization on
    the way: Anthropic's x-api-key went to whatever host the provider named."""
    for fake in (ups.openai, ups.anthropic):
        fake.models_fault = Fault("redirect", location=ups.elsewhere.url + "/models")
    with srv.client() as c:
        r = c.post("/v1/registry/refresh", headers=srv.auth)
    assert r.status_code == 200, r.text
    assert any(req.method == "GET" for req in ups.anthropic.requests)
    assert ups.elsewhere.requests == []
    assert srv.wait_for_log(
        lambda ln: (
            ln.get("msg") == "model list refresh failed; keeping the previous list"
            and "redirects are not followed" in str(ln.get("reason"))
        )
    )


def test_doctor_does_not_follow_redirects(ups: Fakes, tmp_path: Path) -> None:
    ups.anthropic.models_fault = Fault("redirect", location=ups.elsewhere.url + "/models")
    env = {
        "IIR_API_KEY": "doctor-key-" + "0" * 32,
        "IIR_DATA_DIR": str(tmp_path),
        "ANTHROPIC_API_KEY": KEYS["anthropic"],
        "IIR_ANTHROPIC_BASE_URL": ups.anthropic.url,
        "IIR_ALLOW_INSECURE_UPSTREAM": "true",
    }
    checks = {c.name: c for c in run_checks(env, None, timeout=5)}
    check = checks["provider anthropic"]
    assert check.status == FAIL and "redirect" in check.detail, check
    assert ups.anthropic.requests and ups.elsewhere.requests == []
