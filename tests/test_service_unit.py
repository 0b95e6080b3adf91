"""iir.service: systemd-analyze verify and security on the real unit, plus its key settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.unit_file import (
    ROOT,
    UNIT,
    exposure,
    make_verify_root,
    parse_unit,
    security,
    system_analyze,
    values,
    verify,
)

needs_systemd_analyze = pytest.mark.skipif(
    system_analyze() is None,
    reason="systemd-analyze is not installed (packaging/ci-deps.sh installs Debian's systemd)",
)

ENTRIES = parse_unit(UNIT.read_text())
# The server's documented default for IIR_SHUTDOWN_TIMEOUT.
DEFAULT_SHUTDOWN_TIMEOUT = 30


@needs_systemd_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    result = verify(make_verify_root(tmp_path, UNIT.read_text()))
    assert result.returncode == 0, result.stderr
    # verify reports ignored settings on stderr but still exits 0: any output is a defect.
    assert result.stdout.strip() == ""
    assert result.stderr.strip() == ""


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("mutation", "fragment"),
    [
        (("ProtectSystem=strict", "ProtectSystem=bogus"), "protect system"),
        (("Restart=on-failure", "Restart=sometimes"), "restart"),
        (("Type=notify", "Type=notify\nNoSuchSetting=1"), "Unknown key"),
        (("WatchdogSec=60", "WatchdogSec=soon"), "parse sec value"),
    ],
)
def test_verify_check_catches_a_broken_unit(
    tmp_path: Path, mutation: tuple[str, str], fragment: str
) -> None:
    broken = UNIT.read_text().replace(*mutation)
    result = verify(make_verify_root(tmp_path, broken))
    assert fragment.lower() in (result.stdout + result.stderr).lower()


@needs_systemd_analyze
def test_verify_fails_when_execstart_is_missing(tmp_path: Path) -> None:
    result = verify(make_verify_root(tmp_path, UNIT.read_text(), with_exec=False))
    assert result.returncode != 0
    assert "/opt/iir/venv/bin/iir" in result.stderr


@needs_systemd_analyze
def test_security_exposure_matches_the_docs(tmp_path: Path) -> None:
    root = make_verify_root(tmp_path, UNIT.read_text())
    result = security(root)
    assert result.returncode == 0, result.stderr
    score = exposure(result.stdout)
    ops_doc = (ROOT / "docs" / "operations.md").read_text()
    match = re.search(r"exposure level for iir\.service: ([0-9.]+)", ops_doc)
    assert match, "docs/operations.md must record the systemd-analyze security score"
    assert float(match.group(1)) == score
    # --threshold is on the 0-100 scale: the unit must stay "OK" (below 2.0).
    assert security(root, threshold=19).returncode == 0


def test_runs_unprivileged_with_env_file_and_state_dir() -> None:
    assert values(ENTRIES, "User") == ["iir"]
    assert values(ENTRIES, "Group") == ["iir"]
    assert values(ENTRIES, "StateDirectory") == ["iir"]
    assert values(ENTRIES, "WorkingDirectory") == ["/var/lib/iir"]
    assert values(ENTRIES, "ExecStart") == [
        "/opt/iir/venv/bin/iir serve --env-file /etc/iir/iir.env"
    ]
    assert values(ENTRIES, "Restart") == ["on-failure"]
    assert values(ENTRIES, "WantedBy", section="Install") == ["multi-user.target"]


def test_stop_timeout_exceeds_drain_timeout() -> None:
    assert values(ENTRIES, "KillSignal") == ["SIGTERM"]
    (stop,) = values(ENTRIES, "TimeoutStopSec")
    template = (ROOT / "packaging/iir.env.template").read_text()
    configured = re.search(r"^#?IIR_SHUTDOWN_TIMEOUT=(\d+)", template, re.M)
    assert configured
    drain = int(configured.group(1))
    assert drain == DEFAULT_SHUTDOWN_TIMEOUT
    assert int(stop) > drain


def test_hardening_settings_present() -> None:
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "SystemCallArchitectures": "native",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "DevicePolicy": "closed",
    }
    for key, value in expected.items():
        assert values(ENTRIES, key) == [value], key


def test_gpu_device_nodes_stay_reachable() -> None:
    assert values(ENTRIES, "PrivateDevices") in ([], ["no"])
    allowed = {v.split()[0] for v in values(ENTRIES, "DeviceAllow")}
    # /dev/nvidia0.., /dev/nvidiactl and /dev/nvidia-modeset share major 195, named "nvidia" by
    # current drivers and "nvidia-frontend" by older ones; /dev/nvidia-uvm* belong to nvidia-uvm.
    assert {"char-nvidia", "char-nvidia-frontend", "char-nvidia-uvm", "char-nvidia-caps"} <= allowed
    assert all(v.endswith(" rw") for v in values(ENTRIES, "DeviceAllow"))


def test_env_file_is_read_by_iir_not_by_systemd() -> None:
    # EnvironmentFile= would hand every key to the vLLM engine's processes as environment.
    assert values(ENTRIES, "EnvironmentFile") == []
    assert "--env-file /etc/iir/iir.env" in values(ENTRIES, "ExecStart")[0]
    # No IIR_* default in Environment=: it would silently win over the operator's env file.
    assert not [v for v in values(ENTRIES, "Environment") if v.startswith("IIR_")]
    template = (ROOT / "packaging/iir.env.template").read_text()
    assert re.search(r"^IIR_DATA_DIR=/var/lib/iir$", template, re.M)


def test_notify_watchdog_and_resource_bounds() -> None:
    assert values(ENTRIES, "Type") == ["notify"]
    # The notifications come from Granian's worker, a child of the main process.
    assert values(ENTRIES, "NotifyAccess") == ["all"]
    (watchdog,) = values(ENTRIES, "WatchdogSec")
    assert int(watchdog) >= 10
    (memory,) = values(ENTRIES, "MemoryMax")
    assert re.fullmatch(r"\d+%", memory) and 50 <= int(memory[:-1]) < 100
    (tasks,) = values(ENTRIES, "TasksMax")
    assert int(tasks) >= 1024
    ops_doc = (ROOT / "docs" / "operations.md").read_text()
    for setting in (f"WatchdogSec={watchdog}", f"MemoryMax={memory}", f"TasksMax={tasks}"):
        assert setting in ops_doc, f"docs/operations.md must document {setting}"
