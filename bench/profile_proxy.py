"""Where the serving worker's time goes while it proxies: py-spy samples it under wrk load.

Starts the bench's fake upstream and a real ``iir serve`` (as ``bench_proxy.py`` does), drives
non-streamed ``openai/...`` chat completions at 32 connections with ``wrk`` and has ``py-spy
record`` sample the serving worker meanwhile (``--native`` adds the Rust and C frames). Prints the
functions with the most samples on the CPU themselves (self) and including their callees (total).

Run: ``.venv/bin/python -m bench.profile_proxy [seconds] [--native] [--stream] [--raw=FILE]``.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import orjson

from bench import fake_upstream, wrk
from tests.harness import Server, free_port


def _worker_pid(srv: Server) -> int:
    """The serving worker: the child of ``iir serve`` with the most resident memory."""
    assert srv.proc is not None
    pid = srv.proc.pid
    best, best_rss = pid, -1
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{child}/status").read_text())
        if m and int(m.group(1)) > best_rss:
            best, best_rss = int(child), int(m.group(1))
    return best


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``: lines apart are one function."""
    m = re.fullmatch(r"(.*) \((.*?):\d+\)", frame)
    if not m:
        return frame
    return f"{m.group(1)} ({Path(m.group(2)).name})"


def summarise(raw: str, top: int = 25) -> str:
    """py-spy's collapsed stacks -> the top functions by self and by total samples."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";")]
        # The worker's idle threads (Granian's runtime, the pool) sample as their wait calls.
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    out = [f"{samples} samples on the CPU (py-spy --idle off: waiting threads are not counted)"]
    out.append("\nself %   function")
    out += [f"{100 * n / samples:6.1f}  {f}" for f, n in own.most_common(top)]
    out.append("\ntotal %  function")
    out += [f"{100 * n / samples:6.1f}  {f}" for f, n in total.most_common(top)]
    return "\n".join(out)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    seconds = int(args[0]) if args else 15
    native = "--native" in sys.argv
    stream = "--stream" in sys.argv
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    port = free_port()
    env = {
        "OPENAI_API_KEY": "bench-upstream-key",
        "IIR_OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
        "IIR_RATE_LIMIT_PER_IP": "0",
        "IIR_MAX_INFLIGHT_PER_KEY": "0",
        "IIR_MAX_INFLIGHT_PER_IP": "0",
    }
    body: dict[str, object] = {
        "model": "openai/bench-model",
        "messages": [{"role": "user", "content": "Hello there"}],
    }
    if stream:
        body["stream"] = True
    with (
        fake_upstream.running(port),
        Server(env=env) as srv,
        tempfile.TemporaryDirectory() as tmp,
    ):
        path = "/v1/chat/completions"
        data = orjson.dumps(body)
        wrk.run(srv.port, path, "POST", data, srv.auth, 32, seconds=2)  # warm the pools
        out = Path(tmp) / "stacks.txt"
        cmd = [spy, "record", "-p", str(_worker_pid(srv)), "-d", str(seconds), "-r", "200"]
        cmd += ["-f", "raw", "-o", str(out)]
        # --native needs the process paused while it unwinds; Python frames alone do not.
        cmd.append("--native" if native else "--nonblocking")
        load = threading.Thread(
            target=wrk.run,
            args=(srv.port, path, "POST", data, srv.auth, 32, seconds + 2),
        )
        load.start()
        spied = subprocess.run(cmd, capture_output=True, text=True)
        load.join()
        if spied.returncode:
            sys.exit(f"py-spy failed: {spied.stderr.strip()}")
        raw = out.read_text()
        for a in sys.argv:
            if a.startswith("--raw="):  # the collapsed stacks, for a flame graph
                Path(a.removeprefix("--raw=")).write_text(raw)
        print(summarise(raw))


if __name__ == "__main__":
    main()
