"""Helpers for tests that read iir.service and run systemd-analyze against it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "iir.service"
SYSTEM_UNIT_DIRS = [Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")]


def parse_unit(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in order; systemd allows repeated keys, so no dict."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def values(entries: list[tuple[str, str, str]], key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in entries if s == section and k == key]


def system_analyze() -> str | None:
    return shutil.which("systemd-analyze")


def make_verify_root(base: Path, unit_text: str, with_exec: bool = True) -> Path:
    """A minimal root where ``systemd-analyze --root`` can load iir.service and its targets."""
    root = base / "verify-root"
    (root / "etc/systemd/system").mkdir(parents=True)
    for source in SYSTEM_UNIT_DIRS:
        if source.is_dir():
            shutil.copytree(source, root / "usr/lib/systemd/system", symlinks=True)
            break
    (root / "etc/systemd/system/iir.service").write_text(unit_text)
    if with_exec:
        match = re.search(r"^ExecStart=(\S+)", unit_text, re.M)
        assert match, "unit has no ExecStart"
        exe = root / match.group(1).lstrip("/")
        if not exe.exists():
            exe.parent.mkdir(parents=True, exist_ok=True)
            exe.write_text("#!/bin/sh\n")
            exe.chmod(0o755)
    return root


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    tool = system_analyze()
    assert tool is not None
    return subprocess.run(
        [tool, "verify", "--man=no", f"--root={root}", "iir.service"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def security(root: Path, threshold: int | None = None) -> subprocess.CompletedProcess[str]:
    tool = system_analyze()
    assert tool is not None
    cmd = [tool, "security", "--offline=true", f"--root={root}", "--no-pager"]
    if threshold is not None:
        cmd.append(f"--threshold={threshold}")
    return subprocess.run(
        [*cmd, "iir.service"], capture_output=True, text=True, timeout=60, check=False
    )


def exposure(output: str) -> float:
    match = re.search(r"Overall exposure level for iir\.service:\s*([0-9.]+)", output)
    assert match, output[-500:]
    return float(match.group(1))
