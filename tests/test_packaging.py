"""The .deb: build it, inspect it with dpkg-deb, and run its maintainer scripts into a temp root."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.unit_file import SYSTEM_UNIT_DIRS, system_analyze, verify

pytestmark = [
    pytest.mark.packaging,
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed"),
    pytest.mark.timeout(900),
]

TOP = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((TOP / "pyproject.toml").read_text())["project"]["version"]
KEY_LINE = re.compile(r"^IIR_API_KEY=(iir_[A-Za-z0-9]{40})$", re.M)
AS_ROOT = os.geteuid() == 0
SERVICE_USER = "nobody" if AS_ROOT else pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "OUT_DIR": str(out), "PYTHON": sys.executable}
    result = subprocess.run(
        [str(TOP / "packaging/build_deb.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.parent == out
    return path


@pytest.fixture(scope="module")
def control(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ctrl = tmp_path_factory.mktemp("control")
    subprocess.run(["dpkg-deb", "-e", str(deb), str(ctrl)], check=True, timeout=60)
    return ctrl


def maintainer(
    control: Path, script: str, *args: str, root: Path, share: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "ROOT": str(root),
        "IIR_PYTHON": sys.executable,
        "IIR_SERVICE_USER": SERVICE_USER,
    }
    if share is not None:
        env["IIR_SHARE_DIR"] = str(share)
    return subprocess.run(
        ["sh", str(control / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def install_fresh(deb: Path, control: Path, root: Path) -> subprocess.CompletedProcess[str]:
    root.mkdir()
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=60)
    result = maintainer(control, "postinst", "configure", root=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def first_install(
    deb: Path, control: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One install shared by the tests that only look at it (building a venv is slow)."""
    root = tmp_path_factory.mktemp("installed") / "root"
    return root, install_fresh(deb, control, root)


@pytest.fixture(scope="module")
def installed(first_install: tuple[Path, subprocess.CompletedProcess[str]]) -> Path:
    return first_install[0]


def listing(deb: Path) -> dict[str, tuple[str, str]]:
    """path -> (mode string, owner/group) from dpkg-deb -c."""
    out = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    entries = {}
    for line in out.splitlines():
        parts = line.split()
        path = parts[5].removeprefix(".")
        entries[path.rstrip("/") or "/"] = (parts[0], parts[1])
    return entries


def test_package_name_and_fields(deb: Path) -> None:
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert deb.name == f"iir_{VERSION}_{arch}.deb"

    def field(name: str) -> str:
        return subprocess.run(
            ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True
        ).stdout.strip()

    assert field("Package") == "iir"
    assert field("Version") == VERSION
    assert field("Architecture") == arch
    assert "python3 (>= 3.11)" in field("Depends")
    assert "python3-venv" in field("Depends")
    info = subprocess.run(
        ["dpkg-deb", "-I", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    for script in ("postinst", "prerm", "postrm"):
        assert re.search(rf"\d+ bytes,\s+\d+ lines\s+\*\s+{script}\s+#!/bin/sh", info), script


def test_package_contents_and_modes(deb: Path) -> None:
    files = listing(deb)
    expected = {
        "/lib/systemd/system/iir.service": "-rw-r--r--",
        "/usr/lib/iir/iir-install.sh": "-rwxr-xr-x",
        "/usr/share/iir/iir.env.template": "-rw-r--r--",
        "/usr/share/iir/forward_logs_udp.pyz": "-rwxr-xr-x",
        "/usr/share/doc/iir/README.md": "-rw-r--r--",
    }
    for path, mode in expected.items():
        assert path in files, path
        assert files[path] == (mode, "root/root"), path
    assert files["/usr/bin/iir"][0].startswith("l")
    # Every page the README links to is on the box beside it.
    for page in sorted((TOP / "docs").glob("*.md")):
        shipped = files.get(f"/usr/share/doc/iir/docs/{page.name}")
        assert shipped == ("-rw-r--r--", "root/root"), page
    wheels = [p for p in files if p.startswith("/usr/share/iir/wheelhouse/")]
    names = {Path(p).name.split("-")[0] for p in wheels if p.endswith(".whl")}
    assert {"iir", "granian", "orjson", "prometheus_client", "nvidia_ml_py"} <= names
    assert all(owner == "root/root" for _, owner in files.values())
    # The unit in the package is the one in the repository.
    unit = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True
    ).stdout
    assert (TOP / "iir.service").read_bytes() in unit


def test_maintainer_scripts_are_valid_shell(control: Path) -> None:
    for script in ("postinst", "prerm", "postrm"):
        path = control / script
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
        check = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_install_into_temporary_root(installed: Path) -> None:
    root = installed
    venv = root / "opt/iir/venv"
    probe = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "import iir, iir._native, iir.cli.keygen, granian; print(iir.__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=root,  # not the checkout, whose iir/ would shadow the installed one
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().startswith(str(venv))
    assert (venv / "bin/iir").is_file()

    env_file = root / "etc/iir/iir.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o640
    text = env_file.read_text()
    assert KEY_LINE.search(text)
    assert "__IIR_GENERATED_KEY__" not in text
    assert "IIR_DATA_DIR=/var/lib/iir" in text
    for state in ("var/lib/iir", "var/cache/iir"):
        assert stat.S_IMODE((root / state).stat().st_mode) == 0o750
    if AS_ROOT:
        # root:iir 0640: the service reads its keys but cannot rewrite its configuration.
        assert env_file.stat().st_uid == 0
        assert env_file.stat().st_gid == pwd.getpwnam(SERVICE_USER).pw_gid
        assert pwd.getpwuid((root / "var/lib/iir").stat().st_uid).pw_name == SERVICE_USER
    assert not (root / "etc/iir/.iir.env.new").exists()


def test_key_is_not_printed_by_postinst(
    first_install: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, result = first_install
    match = KEY_LINE.search((root / "etc/iir/iir.env").read_text())
    assert match
    assert match.group(1) not in result.stdout + result.stderr
    assert "/etc/iir/iir.env" in result.stdout
    assert "systemctl enable --now iir" in result.stdout


def test_lifecycle_upgrade_keeps_config_remove_keeps_data_purge_deletes(
    deb: Path, control: Path, installed: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    install_fresh(deb, control, root)
    env_file = root / "etc/iir/iir.env"

    # Each install generates its own key.
    first_key = KEY_LINE.search((installed / "etc/iir/iir.env").read_text())
    own_key = KEY_LINE.search(env_file.read_text())
    assert first_key and own_key
    assert first_key.group(1) != own_key.group(1)

    # Upgrade: the operator's env file and the database survive; the venv is rebuilt.
    env_file.write_text(
        env_file.read_text() + "IIR_ALLOWED_KEYS=added_by_operator_0123456789abcdefghijkl\n"
    )
    env_file.chmod(0o640)
    before = hashlib.sha256(env_file.read_bytes()).hexdigest()
    db = root / "var/lib/iir/iir.db"
    db.write_bytes(b"SQLite format 3\x00 pretend jobs")
    leftover = root / "opt/iir/venv/leftover-from-old-version"
    leftover.write_text("x")
    assert maintainer(control, "prerm", "upgrade", VERSION, root=root).returncode == 0
    result = maintainer(control, "postinst", "configure", VERSION, root=root)
    assert result.returncode == 0, result.stderr
    assert "keeping existing" in result.stdout
    assert "systemctl enable --now iir" not in result.stdout  # first-install hint only
    assert hashlib.sha256(env_file.read_bytes()).hexdigest() == before
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o640
    assert db.read_bytes() == b"SQLite format 3\x00 pretend jobs"
    assert not leftover.exists(), "the venv is rebuilt on upgrade"
    assert (root / "opt/iir/venv/bin/iir").is_file()

    # Remove: the venv goes, keys and data stay.
    assert maintainer(control, "prerm", "remove", root=root).returncode == 0
    assert maintainer(control, "postrm", "remove", root=root).returncode == 0
    assert not (root / "opt/iir/venv").exists()
    assert hashlib.sha256(env_file.read_bytes()).hexdigest() == before
    assert db.read_bytes() == b"SQLite format 3\x00 pretend jobs"

    # Purge: everything IIR created is gone.
    assert maintainer(control, "postrm", "purge", root=root).returncode == 0
    for gone in ("etc/iir", "var/lib/iir", "var/cache/iir", "opt/iir"):
        assert not (root / gone).exists(), gone


def test_installed_unit_verifies_against_the_installed_venv(installed: Path) -> None:
    if system_analyze() is None:
        pytest.skip("systemd-analyze is not installed (packaging/ci-deps.sh installs it)")
    # Verify inside the installed tree: ExecStart must be the console script the install made.
    system_units = installed / "usr/lib/systemd/system"
    if not system_units.exists():
        for source in SYSTEM_UNIT_DIRS:
            if source.is_dir():
                shutil.copytree(source, system_units, symlinks=True, dirs_exist_ok=True)
                break
    assert (installed / "lib/systemd/system/iir.service").is_file()
    result = verify(installed)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


@pytest.mark.parametrize(
    ("script", "arg"),
    [("postinst", "bogus"), ("prerm", "bogus"), ("postrm", "bogus")],
)
def test_maintainer_scripts_reject_unknown_actions(
    control: Path, tmp_path: Path, script: str, arg: str
) -> None:
    result = maintainer(control, script, arg, root=tmp_path)
    assert result.returncode == 1
    assert f"unknown argument '{arg}'" in result.stderr


def test_install_without_wheelhouse_fails_clearly(control: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/iir").mkdir(parents=True)
    shutil.copy(TOP / "packaging/iir-install.sh", root / "usr/lib/iir/iir-install.sh")
    result = maintainer(control, "postinst", "configure", root=root)
    assert result.returncode != 0
    assert "no wheelhouse" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (root / "etc/iir/iir.env").exists()


def oldest_python() -> str:
    """Python 3.8 when this machine has one (the script's promise), else the current one."""
    for candidate in ("/root/.pyenv/versions/3.8.18/bin/python", shutil.which("python3.8")):
        if candidate and Path(candidate).exists():
            return candidate
    return sys.executable


def test_shipped_pyz_listens_and_forwards_standalone(installed: Path, tmp_path: Path) -> None:
    pyz = tmp_path / "forward_logs_udp.pyz"
    shutil.copy(installed / "usr/share/iir/forward_logs_udp.pyz", pyz)  # alone, as on a laptop
    python = oldest_python()
    bad = subprocess.run(
        [python, "-S", str(pyz), "--sink", "nohost"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )
    assert bad.returncode == 2 and "no port" in bad.stderr
    listener = subprocess.Popen(
        [python, "-S", str(pyz), "--listen", "0", "--bind", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert listener.stderr is not None and listener.stdout is not None
        banner = listener.stderr.readline()
        port = int(banner.rsplit(":", 1)[1].split("/")[0])
        sent = subprocess.run(
            [python, "-S", str(pyz), "--sink", f"127.0.0.1:{port}"],
            input='{"msg": "from the pyz"}\n',
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        assert listener.stdout.readline() == '{"msg": "from the pyz"}\n'
    finally:
        listener.terminate()
        assert listener.wait(10) == 0


def _has_server() -> bool:
    import importlib.util

    return importlib.util.find_spec("iir.cli") is not None


@pytest.mark.skipif(not _has_server(), reason="needs the HTTP server (iir.cli), not built yet")
def test_deploy_test_script_end_to_end(deb: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "IIR_DEB": str(deb),
        "PYTHON": sys.executable,
        "IIR_LOG_FILE": str(tmp_path / "deploy-test.log"),
    }
    result = subprocess.run(
        [str(TOP / "packaging/deploy_test.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for step in ("/health ok", "authenticated chat", "/metrics ok", "REMOTE_LOG_SINK ok", "OK"):
        assert step in result.stdout
