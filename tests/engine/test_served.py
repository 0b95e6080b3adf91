"""One real ``iir serve`` with the real vLLM engine (CPU build) and a tiny model, end to end.

The server is shared by the module (an engine takes half a minute to start on two cores); tests
run in file order and the last ones change its state on purpose: the engine core killed and
rebuilt, a second model dropped into ``IIR_MODEL_DIR``, then SIGTERM. Greedy output is compared
with the same model run by ``transformers`` in the test process (``Reference``).
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import psutil
import pytest

from ..harness import Server
from .conftest import ENGINE_ENV, IIR_ENGINE_ENV, Models, Reference, UdpSink

MODEL = "tiny"
CONTEXT = 256
HELLO = [{"role": "user", "content": "hello there"}]
PROMPTS = [
    HELLO,
    [{"role": "user", "content": "What does the router do with a request?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "def main() -> None:"},
    ],
    [{"role": "user", "content": "x"}],
]


def wait_until(what: str, check: Callable[[], Any], timeout: float, srv: Server) -> Any:
    """Polls ``check`` until it returns something truthy; fails naming ``what`` after
    ``timeout`` seconds (a bound on waiting for the engine, not a speed requirement)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{srv.logs()[-6000:]}")
        time.sleep(0.2)


def registry(srv: Server) -> dict[str, Any]:
    return httpx.get(srv.url + "/v1/registry/status", headers=srv.auth, timeout=30).json()


def model_status(srv: Server, name: str = MODEL) -> dict[str, Any] | None:
    return next((m for m in registry(srv)["models"] if m["id"] == name), None)


def engine_entry(srv: Server, name: str = MODEL) -> dict[str, Any]:
    [entry] = [e for e in registry(srv)["local_engine"]["engines"] if e["model"] == name]
    return entry


def wait_ready(srv: Server, name: str = MODEL, timeout: float = 300) -> None:
    def ready() -> bool:
        st = model_status(srv, name)
        if st is not None and st["state"] == "failed" and "restarting" not in (st["reason"] or ""):
            raise AssertionError(f"{name} failed: {st['reason']}\n{srv.logs()[-6000:]}")
        return st is not None and st["state"] == "ready"

    wait_until(f"{name} ready", ready, timeout, srv)


def chat(srv: Server, messages: list[dict[str, Any]], **kw: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": messages, **kw}
    return httpx.post(srv.url + "/v1/chat/completions", headers=srv.auth, json=body, timeout=120)


def stream_chunks(srv: Server, messages: list[dict[str, Any]], **kw: Any) -> list[dict[str, Any]]:
    body = {"model": MODEL, "messages": messages, "stream": True, **kw}
    with httpx.stream(
        "POST", srv.url + "/v1/chat/completions", headers=srv.auth, json=body, timeout=120
    ) as r:
        assert r.status_code == 200, r.read()
        frames = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    return [orjson.loads(f) for f in frames[:-1]]


def engine_cores(srv: Server) -> list[psutil.Process]:
    assert srv.proc is not None
    out = []
    for p in psutil.Process(srv.proc.pid).children(recursive=True):
        try:
            if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name():
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def finish_of(ids: list[int], max_tokens: int, eos: int) -> str:
    return "stop" if ids and ids[-1] == eos else "length" if len(ids) == max_tokens else "stop"


@pytest.fixture(scope="module")
def srv(models: Models, udp_sink: UdpSink) -> Iterator[Server]:
    env = {
        **ENGINE_ENV,
        **IIR_ENGINE_ENV,
        "IIR_LOCAL_MODELS": f"{MODEL}={models.tiny}",
        "IIR_MODEL_DIR": str(models.model_dir),
        "IIR_AUTOLOAD_MODELS": "true",
        "IIR_VLLM_RESTART_BACKOFF_S": "1",
        "IIR_SHUTDOWN_TIMEOUT": "60",
        "REMOTE_LOG_SINK": udp_sink.address,
    }
    server = Server(env=env)
    try:
        server.start(timeout=300)
        wait_ready(server)
        yield server
    finally:
        server.stop(timeout=120)
        server.close()


# --- the model as served ----------------------------------------------------------------------


def test_model_listed_with_its_real_context_length(srv: Server) -> None:
    ids = {
        m["id"]: m["owned_by"]
        for m in httpx.get(srv.url + "/v1/models", headers=srv.auth).json()["data"]
    }
    assert ids[MODEL] == "local"
    st = registry(srv)
    [tiny] = [m for m in st["models"] if m["id"] == MODEL]
    assert (tiny["source"], tiny["state"], tiny["reason"]) == ("local", "ready", None)
    assert tiny["context_length"] == CONTEXT  # the engine's, from the model's config.json
    assert st["local_engine"]["available"] is True and st["local_engine"]["reason"] is None
    assert engine_entry(srv) == {
        "model": MODEL,
        "origin": "configured",
        "restarts": 0,
        "unfinished": 0,
    }
    assert httpx.get(srv.url + "/health").json() == {"status": "ok"}


def test_greedy_chat_is_what_the_model_computes(srv: Server, reference: Reference) -> None:
    eos = reference.tokenizer.eos_token_id
    for messages in PROMPTS:
        want = reference.greedy(messages, 24)
        r = chat(srv, messages, temperature=0, max_tokens=24)
        assert r.status_code == 200, r.text
        body = r.json()
        [choice] = body["choices"]
        assert choice["message"]["content"] == reference.text(want)
        assert choice["finish_reason"] == finish_of(want, 24, eos)
        assert body["usage"]["prompt_tokens"] == len(reference.prompt_ids(messages))
        assert body["usage"]["completion_tokens"] == len(want)
        assert body["usage"]["total_tokens"] == len(reference.prompt_ids(messages)) + len(want)
        assert body["model"] == MODEL
        again = chat(srv, messages, temperature=0, max_tokens=24).json()
        assert again["choices"][0]["message"]["content"] == choice["message"]["content"]


def test_stream_deltas_finish_reason_and_usage(srv: Server, reference: Reference) -> None:
    want = reference.greedy(HELLO, 32)
    chunks = stream_chunks(
        srv, HELLO, temperature=0, max_tokens=32, stream_options={"include_usage": True}
    )
    with_choices = [c for c in chunks if c["choices"]]
    deltas = [c["choices"][0]["delta"].get("content") or "" for c in with_choices]
    assert sum(1 for d in deltas if d) > 1  # token by token, not one block
    assert "".join(deltas) == reference.text(want)
    finishes = [c["choices"][0]["finish_reason"] for c in with_choices]
    assert finishes[-1] == finish_of(want, 32, reference.tokenizer.eos_token_id)
    assert all(f is None for f in finishes[:-1])
    assert len({c["id"] for c in chunks}) == 1
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    assert usage["prompt_tokens"] == len(reference.prompt_ids(HELLO))
    assert usage["completion_tokens"] == len(want)


def test_max_tokens_cuts_the_answer(srv: Server, reference: Reference) -> None:
    want = reference.greedy(HELLO, 5)
    body = chat(srv, HELLO, temperature=0, max_tokens=5).json()
    assert body["choices"][0]["message"]["content"] == reference.text(want)
    assert body["usage"]["completion_tokens"] == len(want) == 5
    assert body["choices"][0]["finish_reason"] == "length"


def test_stop_string_ends_the_answer_before_it(srv: Server, reference: Reference) -> None:
    full = reference.text(reference.greedy(HELLO, 32))
    start = next(i for i in range(6, len(full) - 3) if not full[i].isspace())
    stop = full[start : start + 3]
    body = chat(srv, HELLO, temperature=0, max_tokens=32, stop=[stop]).json()
    assert body["choices"][0]["message"]["content"] == full[: full.index(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"
    frames = stream_chunks(srv, HELLO, temperature=0, max_tokens=32, stop=stop)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in frames if c["choices"])
    assert text == full[: full.index(stop)]


def test_n_choices_and_seeded_sampling_repeat_exactly(srv: Server) -> None:
    kw: dict[str, Any] = {"temperature": 1.0, "seed": 1234, "max_tokens": 12, "n": 3}
    first = chat(srv, HELLO, logprobs=True, **kw).json()
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    per_choice = [len(c["logprobs"]["content"]) for c in first["choices"]]
    assert first["usage"]["completion_tokens"] == sum(per_choice)
    second = chat(srv, HELLO, logprobs=True, **kw).json()
    texts = [c["message"]["content"] for c in first["choices"]]
    assert [c["message"]["content"] for c in second["choices"]] == texts
    other = chat(srv, HELLO, **{**kw, "seed": 99, "n": 1}).json()
    assert other["choices"][0]["message"]["content"]  # sampled text, not checked for content


def test_logprobs_match_the_reference(srv: Server, reference: Reference) -> None:
    messages = PROMPTS[1]
    want = reference.greedy(messages, 16)
    body = chat(srv, messages, temperature=0, max_tokens=16, logprobs=True, top_logprobs=3).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == len(want) == body["usage"]["completion_tokens"]
    expected = reference.logprobs(messages, want)
    for item, tid, lp in zip(content, want, expected, strict=True):
        assert item["token"] == reference.tokenizer.decode([tid], skip_special_tokens=False) or (
            tid in reference.tokenizer.all_special_ids
        )
        assert item["logprob"] == pytest.approx(lp, abs=1e-3)
        assert len(item["top_logprobs"]) == 3
        # Greedy: the chosen token is the most likely one.
        assert item["top_logprobs"][0]["logprob"] == pytest.approx(item["logprob"], abs=1e-6)
        assert item["bytes"] == list(item["token"].encode())


def test_prompt_longer_than_the_context_is_400(srv: Server) -> None:
    long = [{"role": "user", "content": "words and more words " * 200}]
    r = chat(srv, long)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and f"{CONTEXT} tokens" in err["message"]
    r = chat(srv, HELLO, max_tokens=CONTEXT)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    # The template's own check (a system message after the first turn) is a 400 too.
    late = [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]
    r = chat(srv, late)
    assert r.status_code == 400 and "System message" in r.json()["error"]["message"]


def test_client_disconnect_aborts_the_engine_request(srv: Server) -> None:
    body = {"model": MODEL, "messages": HELLO, "stream": True, "temperature": 0}
    seen_running = 0
    with httpx.stream(
        "POST", srv.url + "/v1/chat/completions", headers=srv.auth, json=body, timeout=120
    ) as r:
        lines = r.iter_lines()
        got = 0
        while got < 3:
            if next(lines).startswith("data: "):
                got += 1
        seen_running = engine_entry(srv)["unfinished"]
    # The engine held the request while it streamed, and lets it go once the client left.
    assert seen_running == 1
    wait_until("engine unfinished back to 0", lambda: engine_entry(srv)["unfinished"] == 0, 60, srv)
    assert srv.wait_for_log(lambda ln: ln.get("event") == "local_abort", timeout=30)
    metrics = httpx.get(srv.url + "/metrics").text
    assert f'iir_local_requests_running{{model="{MODEL}"}} 0.0' in metrics
    assert f'iir_local_requests_waiting{{model="{MODEL}"}} 0.0' in metrics


def test_many_concurrent_requests(srv: Server, reference: Reference) -> None:
    results: list[tuple[int, int, str, dict[str, Any]]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        messages = PROMPTS[i % len(PROMPTS)]
        if i % 2:
            chunks = stream_chunks(
                srv, messages, max_tokens=16, temperature=0, stream_options={"include_usage": True}
            )
            text = "".join(
                c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
            )
            out = (i, 200, text, chunks[-1]["usage"])
        else:
            r = chat(srv, messages, max_tokens=16, temperature=0)
            body = r.json()
            out = (i, r.status_code, body["choices"][0]["message"]["content"], body["usage"])
        with lock:
            results.append(out)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sorted(i for i, *_ in results) == list(range(32))
    for i, status, text, usage in results:
        messages = PROMPTS[i % len(PROMPTS)]
        assert status == 200
        assert usage["prompt_tokens"] == len(reference.prompt_ids(messages))
        assert 0 < usage["completion_tokens"] <= 16
        assert text == reference.text(reference.greedy(messages, 16))
    assert engine_entry(srv)["unfinished"] == 0


def access_line_flows(srv: Server, udp_sink: UdpSink, tag: str) -> None:
    """A request's access line reaches stderr and the UDP sink without anything flushing it."""
    rid = f"{tag}-{time.monotonic_ns()}"
    r = httpx.get(srv.url + "/v1/models", headers={**srv.auth, "x-request-id": rid})
    assert r.status_code == 200

    def stderr_has() -> bool:
        return any(ln.get("request_id") == rid and ln.get("route") for ln in srv.log_lines())

    def udp_has() -> bool:
        return any(rid in line for line in list(udp_sink.lines))

    wait_until(f"access line {rid} on stderr", stderr_has, 15, srv)
    wait_until(f"access line {rid} over UDP", udp_has, 15, srv)


def test_iir_logs_keep_flowing_after_the_engine_is_built(srv: Server, udp_sink: UdpSink) -> None:
    access_line_flows(srv, udp_sink, "built")
    logs = srv.logs()
    assert "--- Logging error ---" not in logs
    assert "pid=" in logs  # vLLM's own lines, in its format, from IIR's process
    ready = [ln for ln in srv.log_lines() if ln.get("event") == "local_ready"]
    assert [ln["model"] for ln in ready] == [MODEL]


def test_engine_core_killed_degrades_then_restarts(
    srv: Server, reference: Reference, udp_sink: UdpSink
) -> None:
    [core] = engine_cores(srv)
    core.kill()
    core.wait(30)

    def degraded() -> dict[str, Any] | None:
        # With a key /health names the cause; without one it says only "backend unavailable".
        r = httpx.get(srv.url + "/health", headers=srv.auth)
        return r.json() if r.status_code == 503 else None

    health = wait_until("/health degraded", degraded, 60, srv)
    assert health["status"] == "degraded" and "engine died" in health["reasons"][0]
    anonymous = httpx.get(srv.url + "/health").json()
    if anonymous["status"] == "degraded":  # not restarted yet
        assert anonymous["reasons"] == ["backend unavailable"]
    r = chat(srv, HELLO, max_tokens=4)
    if r.status_code != 503:  # restarted already: the next engine is being built
        pytest.fail(f"expected 503 while the engine is down, got {r.status_code}: {r.text}")
    assert r.json()["error"]["code"] == "model_unavailable" and r.headers["retry-after"] == "5"
    echo = {"model": "iir/echo", "messages": HELLO}
    ok = httpx.post(srv.url + "/v1/chat/completions", headers=srv.auth, json=echo, timeout=30)
    assert ok.status_code == 200
    wait_ready(srv)
    assert httpx.get(srv.url + "/health").json() == {"status": "ok"}
    assert engine_entry(srv)["restarts"] >= 1
    [new_core] = engine_cores(srv)
    assert new_core.pid != core.pid
    want = reference.greedy(HELLO, 24)
    body = chat(srv, HELLO, temperature=0, max_tokens=24).json()
    assert body["choices"][0]["message"]["content"] == reference.text(want)
    # The rebuilt engine ran vLLM's logging set-up again: IIR's lines still flow.
    access_line_flows(srv, udp_sink, "rebuilt")
    assert "--- Logging error ---" not in srv.logs()


def test_refresh_picks_up_a_model_dropped_into_the_model_dir(srv: Server, models: Models) -> None:
    assert model_status(srv, "tiny2") is None
    shutil.copytree(models.tiny2, models.model_dir / "tiny2")
    r = httpx.post(srv.url + "/v1/registry/refresh", headers=srv.auth, timeout=60)
    assert r.status_code == 200
    [entry] = [m for m in r.json()["models"] if m["id"] == "tiny2"]
    assert entry["state"] in ("loading", "ready") and entry["context_length"] == 512
    wait_ready(srv, "tiny2")
    st = model_status(srv, "tiny2")
    assert st is not None and st["context_length"] == 512
    assert engine_entry(srv, "tiny2")["origin"] == "model_dir"
    body = {"model": "tiny2", "messages": HELLO, "max_tokens": 8, "temperature": 0}
    r = httpx.post(srv.url + "/v1/chat/completions", headers=srv.auth, json=body, timeout=120)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0
    listed = {m["id"] for m in httpx.get(srv.url + "/v1/models", headers=srv.auth).json()["data"]}
    assert {MODEL, "tiny2"} <= listed


def test_sigterm_drains_inflight_requests_and_exits_0(srv: Server) -> None:
    assert srv.proc is not None
    tree = [psutil.Process(srv.proc.pid), *psutil.Process(srv.proc.pid).children(recursive=True)]
    result: dict[str, Any] = {"after_signal": 0}
    started, signalled = threading.Event(), threading.Event()

    def consume() -> None:
        body = {
            "model": MODEL,
            "messages": HELLO,
            "stream": True,
            "temperature": 0,
            "max_tokens": 64,
        }
        with httpx.stream(
            "POST", srv.url + "/v1/chat/completions", headers=srv.auth, json=body, timeout=120
        ) as r:
            frames = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    frames.append(line[6:])
                    result["after_signal"] += signalled.is_set()
                    started.set()
            result["frames"] = frames

    t = threading.Thread(target=consume)
    t.start()
    assert started.wait(60)
    srv.proc.send_signal(signal.SIGTERM)
    signalled.set()
    t.join(120)
    code = srv.proc.wait(120)
    frames = result["frames"]
    assert frames[-1] == "[DONE]"
    assert result["after_signal"] > 0  # the stream was still under way when the signal came
    chunks = [orjson.loads(f) for f in frames[:-1]]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] in ("length", "stop")  # answered to the end, not cut
    assert code == 0
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert alive == []  # the engine core processes went with it
