"""The chat path of this checkout against the same path at another git revision, side by side.

``python -m bench.revisions <rev>`` builds ``<rev>`` into a scratch worktree with its own venv (the
Rust extension included), starts both servers with the same settings, and sends them the same
requests in interleaved rounds, so that a busy machine slows both alike. It prints per-request
latency (p50, p99, over sequential keep-alive requests) for each and the ratio this/then. It is how
a change that moves the request path is shown not to slow it down (docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from .bench_http import CHAT, STREAM
from .loadgen import Conn, build_request, percentile

REPO = Path(__file__).resolve().parent.parent
KEY = "bench-key-0123456789abcdef0123456789abcdef"


def build(rev: str, into: Path) -> Path:
    """``rev`` checked out at ``into`` with a venv holding it (not editable); its ``iir``."""
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(into), rev], check=True
    )
    venv = into / ".venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(into)], check=True)
    return venv / "bin" / "iir"


def serve(iir: Path, port: int, data: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IIR_")}
    env.update(
        IIR_API_KEY=KEY,
        IIR_DATA_DIR=str(data),
        IIR_RATE_LIMIT_PER_IP="0",
        IIR_PROBE_RATE_LIMIT_PER_IP="0",
        IIR_LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen(
        [str(iir), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=data,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{iir} did not become healthy on port {port}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its children (Granian's worker), from /proc:
    unlike latency, it hardly moves when other work shares the machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pids.extend(int(k) for k in kids)
    return total


def round_trip_times(port: int, request: bytes, n: int) -> list[float]:
    conn = Conn(port)
    for _ in range(100):
        conn.roundtrip(request)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.roundtrip(request)
        out.append(time.perf_counter() - t0)
    conn.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rev", help="the git revision to compare with (e.g. a commit before a change)")
    ap.add_argument("--this", help="a revision to measure instead of the working tree")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=2000, help="per round, per server, per path")
    args = ap.parse_args(argv)
    here = REPO / ".venv" / "bin" / "iir"
    with tempfile.TemporaryDirectory(prefix="iir-rev-") as tmp:
        trees = [Path(tmp) / "then"] + ([Path(tmp) / "this"] if args.this else [])
        procs = []
        try:
            servers = {
                "then": build(args.rev, trees[0]),
                "this": build(args.this, trees[1]) if args.this else here,
            }
            ports = {}
            for i, (name, iir) in enumerate(servers.items()):
                data = Path(tmp) / f"data-{name}"
                data.mkdir()
                ports[name] = 18400 + i
                procs.append(serve(iir, ports[name], data))
            auth = {"Authorization": f"Bearer {KEY}"}
            paths = {
                "chat": build_request("POST", "/v1/chat/completions", CHAT, auth),
                "chat stream": build_request("POST", "/v1/chat/completions", STREAM, auth),
            }
            samples: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
            for _ in range(args.rounds):
                for path, request in paths.items():
                    for (name, port), proc in zip(ports.items(), procs, strict=True):
                        cpu = cpu_seconds(proc.pid)
                        times = round_trip_times(port, request, args.requests)
                        cpu = (cpu_seconds(proc.pid) - cpu) / (args.requests + 100)
                        p50, p99 = percentile(times, 0.5), percentile(times, 0.99)
                        samples.setdefault((path, name), []).append((p50, p99, cpu))
            this_name = args.this or "the working tree"
            print(f"{args.rev} (then) against {this_name} (this), {args.rounds} rounds")
            columns = ("p50", "p99", "CPU")
            head = "".join(f" {'then ' + c:>9} {'this ' + c:>9} {'ratio':>6}" for c in columns)
            print(f"{'path':<12}{head}   (µs per request, median of rounds)")
            for path in paths:
                row = f"{path:<12}"
                for i in range(len(columns)):
                    then = statistics.median(s[i] for s in samples[(path, "then")]) * 1e6
                    this = statistics.median(s[i] for s in samples[(path, "this")]) * 1e6
                    row += f" {then:9.0f} {this:9.0f} {this / then:6.2f}"
                print(row)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(20)
            for tree in trees:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                    check=False,
                )
                shutil.rmtree(tree, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
