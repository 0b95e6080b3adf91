"""GPU smoke check: IIR with a real local model on a box with an NVIDIA GPU.

    python bench/gpu_smoke.py Qwen/Qwen2.5-0.5B-Instruct      # needs vLLM (pip install '.[vllm,dev]')
    python bench/gpu_smoke.py --nvml-only                     # needs only the driver and nvidia-smi

It starts ``iir serve`` on a free loopback port, compares ``GET /v1/registry/status`` hardware facts
with ``nvidia-smi --query-gpu=... --format=csv``, checks the GPU gauges in ``/metrics``, then (unless
``--nvml-only``) waits for the model, runs a non-streamed chat, a streamed chat and a client
disconnect, and prints time to first token and tokens per second. Exit code 0 when every check
passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

SMI_FIELDS = [
    "index",
    "name",
    "uuid",
    "memory.total",
    "memory.used",
    "driver_version",
    "temperature.gpu",
    "utilization.gpu",
]
MIB = 1024 * 1024


class Smoke:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def check(self, ok: bool, what: str) -> bool:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            self.failures.append(what)
        return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", nargs="?", help="local path or hub id of a small chat model")
    p.add_argument("--served-name", help="name clients use (default: the model argument)")
    p.add_argument("--nvml-only", action="store_true", help="check NVML facts only (no vLLM)")
    p.add_argument("--max-model-len", type=int, default=4096, help="IIR_VLLM_MAX_MODEL_LEN")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    p.add_argument("--max-tokens", type=int, default=128, help="completion tokens per chat")
    p.add_argument(
        "--load-timeout", type=float, default=1200.0, help="seconds to wait for the model"
    )
    p.add_argument("--iir", default=None, help="path of the iir command (default: next to python)")
    args = p.parse_args(argv)
    if not args.nvml_only and not args.model:
        p.error("a model is required unless --nvml-only is given")
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nvidia_smi() -> list[dict[str, str]]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise SystemExit("nvidia-smi not found: this check needs an NVIDIA driver")
    out = subprocess.run(
        [exe, f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [
        dict(zip(SMI_FIELDS, (c.strip() for c in row), strict=True))
        for row in csv.reader(io.StringIO(out))
        if row
    ]


def check_hardware(smoke: Smoke, url: str, auth: dict[str, str]) -> None:
    print("hardware: IIR registry status vs nvidia-smi")
    hw = httpx.get(url + "/v1/registry/status", headers=auth, timeout=30).json()["hardware"]
    smi = nvidia_smi()
    gpus = hw["gpus"]
    print(f"  NVML: driver {hw['driver_version']}, CUDA driver {hw['cuda_driver_version']}")
    smoke.check(hw["gpu_reason"] is None, f"NVML available (reason: {hw['gpu_reason']})")
    smoke.check(len(gpus) == len(smi), f"GPU count {len(gpus)} == nvidia-smi {len(smi)}")
    for g, s in zip(gpus, smi, strict=False):
        i = s["index"]
        print(f"  GPU {i}: {orjson.dumps(g).decode()}")
        smoke.check(str(g["index"]) == i, f"GPU {i}: index")
        smoke.check(g["name"] == s["name"], f"GPU {i}: name {g['name']!r} == {s['name']!r}")
        smoke.check(g["uuid"] == s["uuid"], f"GPU {i}: uuid {g['uuid']}")
        total_mib = (g["memory_total_bytes"] or 0) / MIB
        smoke.check(
            abs(total_mib - float(s["memory.total"])) <= 1,
            f"GPU {i}: memory total {total_mib:.0f} MiB == {s['memory.total']} MiB",
        )
        # NVML's "used" counts memory the driver reserves, which nvidia-smi leaves out.
        used_mib = (g["memory_used_bytes"] or 0) / MIB
        smoke.check(
            used_mib + 1 >= float(s["memory.used"]) and used_mib - float(s["memory.used"]) < 2048,
            f"GPU {i}: memory used {used_mib:.0f} MiB vs nvidia-smi {s['memory.used']} MiB "
            "(NVML includes the driver reserve)",
        )
        smoke.check(
            hw["driver_version"] == s["driver_version"],
            f"driver version {hw['driver_version']} == {s['driver_version']}",
        )
        if s["temperature.gpu"].isdigit() and g["temperature_celsius"] is not None:
            smoke.check(
                abs(g["temperature_celsius"] - int(s["temperature.gpu"])) <= 5,
                f"GPU {i}: temperature {g['temperature_celsius']} C ~ {s['temperature.gpu']} C",
            )
    metrics = httpx.get(url + "/metrics", timeout=30).text
    for g in gpus:
        for name in ("iir_gpu_memory_used_bytes", "iir_gpu_temperature_celsius"):
            smoke.check(
                f'{name}{{gpu="{g["index"]}"}}' in metrics, f"/metrics has {name} gpu {g['index']}"
            )


def wait_model(url: str, auth: dict[str, str], name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        st = httpx.get(url + "/v1/registry/status", headers=auth, timeout=30).json()
        model = next((m for m in st["models"] if m["id"] == name), None)
        if model and (model["state"], model["reason"]) != last:
            last = (model["state"], model["reason"])
            print(f"  {name}: {model['state']} {model['reason'] or ''}")
        if model and model["state"] in ("ready", "unavailable"):
            return model
        time.sleep(2)
    raise SystemExit(f"{name} did not load within {timeout:.0f} s")


def check_chats(smoke: Smoke, url: str, auth: dict[str, str], name: str, max_tokens: int) -> None:
    messages = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
    body = {"model": name, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0}
    with httpx.Client(base_url=url, headers=auth, timeout=300) as c:
        print("non-streamed chat")
        t0 = time.perf_counter()
        r = c.post("/v1/chat/completions", json=body)
        elapsed = time.perf_counter() - t0
        smoke.check(r.status_code == 200, f"status {r.status_code}")
        if r.status_code == 200:
            usage = r.json()["usage"]
            print(
                f"  usage {usage}; {elapsed:.3f} s; {usage['completion_tokens'] / elapsed:.1f} tokens/s"
            )
            smoke.check(usage["completion_tokens"] > 0, "completion tokens > 0")

        print("streamed chat")
        stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        t0 = time.perf_counter()
        first = None
        usage = None
        with c.stream("POST", "/v1/chat/completions", json=stream_body) as s:
            smoke.check(s.status_code == 200, f"status {s.status_code}")
            for line in s.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = orjson.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                elif (
                    first is None
                    and chunk["choices"]
                    and chunk["choices"][0]["delta"].get("content")
                ):
                    first = time.perf_counter()
        end = time.perf_counter()
        smoke.check(first is not None and usage is not None, "content chunks and a usage chunk")
        if first is not None and usage is not None:
            gen = max(end - first, 1e-9)
            print(
                f"  time to first token {1000 * (first - t0):.1f} ms; "
                f"{usage['completion_tokens']} tokens; {usage['completion_tokens'] / gen:.1f} tokens/s"
            )

        print("client disconnect")
        long_body = {**body, "max_tokens": 2048, "stream": True}
        with c.stream("POST", "/v1/chat/completions", json=long_body) as s:
            lines = s.iter_lines()
            for _ in range(8):
                next(lines, None)
        running = None
        for _ in range(50):
            text = c.get("/metrics").text
            line = next(
                (
                    ln
                    for ln in text.splitlines()
                    if ln.startswith(f'iir_local_requests_running{{model="{name}"}}')
                ),
                None,
            )
            running = float(line.split()[-1]) if line else None
            if running == 0:
                break
            time.sleep(0.1)
        smoke.check(running == 0, f"no local request running after the disconnect ({running})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    iir = args.iir or str(Path(sys.executable).with_name("iir"))
    key = "smoke-" + secrets.token_urlsafe(32)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    name = args.served_name or args.model
    tmp = tempfile.mkdtemp(prefix="iir-gpu-smoke-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IIR_")}
    env.update({"IIR_API_KEY": key, "IIR_DATA_DIR": tmp})
    if not args.nvml_only:
        env.update(
            {
                "IIR_LOCAL_MODELS": f"{name}={args.model}",
                "IIR_VLLM_MAX_MODEL_LEN": str(args.max_model_len),
                "IIR_VLLM_GPU_MEMORY_UTILIZATION": str(args.gpu_memory_utilization),
            }
        )
    log_path = Path(tmp) / "iir.log"
    smoke = Smoke()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [iir, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            auth = {"Authorization": f"Bearer {key}"}
            for _ in range(600):
                if proc.poll() is not None:
                    raise SystemExit(f"iir exited with {proc.returncode}; log in {log_path}")
                try:
                    if httpx.get(url + "/health", timeout=2).status_code in (200, 503):
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            check_hardware(smoke, url, auth)
            if not args.nvml_only:
                print(f"local model {name}")
                model = wait_model(url, auth, name, args.load_timeout)
                if smoke.check(model["state"] == "ready", f"{name} ready ({model['reason']})"):
                    check_chats(smoke, url, auth, name, args.max_tokens)
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"log: {log_path}")
    if smoke.failures:
        print(f"{len(smoke.failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
