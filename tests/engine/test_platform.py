"""IIR's view of the installed vLLM: its platform (the CPU build here) and its distribution."""

from __future__ import annotations

import os
import subprocess
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from iir.backends.local.vllm import VllmEngineFactory

from ..harness import IIR, REPO


def test_the_cpu_build_can_build_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    # "cpu" sets VLLM_TARGET_DEVICE for vLLM; the test's environment gets its old value back.
    monkeypatch.setenv("VLLM_TARGET_DEVICE", "")
    monkeypatch.delenv("VLLM_TARGET_DEVICE")
    assert VllmEngineFactory("auto").unavailable_reason() is None
    assert VllmEngineFactory("cpu").unavailable_reason() is None
    reason = VllmEngineFactory("cuda").unavailable_reason()
    assert reason == "IIR_VLLM_DEVICE=cuda, but vLLM's platform here is 'cpu'"
    assert os.environ["VLLM_TARGET_DEVICE"] == "cpu"


def test_doctor_reports_vllm_cpu(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "IIR_API_KEY": "k" * 32,
        "IIR_DATA_DIR": str(tmp_path),
        "IIR_LOCAL_MODELS": "tiny=/models/tiny",
    }
    proc = subprocess.run(
        [IIR, "doctor"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    [line] = [ln for ln in proc.stdout.splitlines() if "vLLM" in ln]
    assert line.split()[0] == "ok"
    assert line.endswith(f"installed, version {version('vllm-cpu')} (vllm-cpu)")


def test_the_vllm_extra_pins_the_release_checked_here() -> None:
    """The GPU box gets the vLLM release whose CPU build this suite runs (same API and code)."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["optional-dependencies"]["vllm"] == [f"vllm=={version('vllm-cpu')}"]
