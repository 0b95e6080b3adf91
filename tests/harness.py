"""Starts the real IIR server (``iir serve``) on a free loopback port for a test."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

REPO = Path(__file__).resolve().parents[1]
IIR = str(Path(sys.executable).with_name("iir"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One ``iir serve`` process. Its stderr (JSON log lines) is kept in a file for assertions."""

    def __init__(
        self,
        env: dict[str, str] | None = None,
        key: str = "test-key-0123456789abcdef0123456789abcdef",
        data_dir: Path | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.key = key
        self.port = free_port()
        # With IIR_TLS_CERT the server speaks https; clients trust that (self-signed) certificate.
        cert = (env or {}).get("IIR_TLS_CERT")
        self.verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=cert) if cert else True
        )
        self.url = f"{'https' if cert else 'http'}://127.0.0.1:{self.port}"
        self._tmp = tempfile.TemporaryDirectory(prefix="iir-test-")
        self.data_dir = data_dir or Path(self._tmp.name) / "data"
        self.log_path = Path(self._tmp.name) / "server.log"
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(
                ("IIR_", "OPENAI_", "ANTHROPIC_", "XAI_", "GROK_", "OPENROUTER_", "OPENLLAMA_")
            )
        }
        base.update(
            {
                "IIR_API_KEY": key,
                "IIR_DATA_DIR": str(self.data_dir),
                "IIR_SHUTDOWN_TIMEOUT": "10",
                # Every test client is 127.0.0.1, and module-scoped servers serve hundreds of
                # requests a minute (pollers, hypothesis): the shipped 600/min per-IP limit would
                # turn a fast run into random 429s. Tests of that limit set it explicitly.
                "IIR_RATE_LIMIT_PER_IP": "0",
                "IIR_PROBE_RATE_LIMIT_PER_IP": "0",  # the same for /health and /metrics pollers
                # Tests read a counter right after the request that moved it.
                "IIR_METRICS_CACHE_SECONDS": "0",
            }
        )
        base.update(env or {})
        self.env = base
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Server:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [IIR, "serve", "--host", "127.0.0.1", "--port", str(self.port), *self.args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                health = httpx.get(self.url + "/health", timeout=1, verify=self.verify)
                if health.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become healthy:\n{self.logs()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                try:
                    out.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    continue
        return out

    def wait_for_log(
        self, predicate: Any, timeout: float = 5.0, count: int = 1
    ) -> list[dict[str, Any]]:
        """Log lines matching ``predicate``, waiting for ``count`` of them: lines are written
        after responses, in batches."""
        deadline = time.monotonic() + timeout
        while True:
            found = [ln for ln in self.log_lines() if predicate(ln)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def client(self, **kw: Any) -> httpx.Client:
        kw.setdefault("verify", self.verify)
        return httpx.Client(base_url=self.url, timeout=30, **kw)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
