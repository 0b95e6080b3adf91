"""The operator CLI: ``iir version``, ``iir keygen``, ``iir doctor`` and argument errors."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

from .harness import IIR, free_port
from .providers.fakes import FakeProvider


def _iir(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("IIR_", "OPENAI_", "ANTHROPIC_", "XAI_", "GROK_", "OPENROUTER_"))
    }
    base.update(env or {})
    return subprocess.run([IIR, *args], env=base, capture_output=True, text=True, timeout=60)


def test_version_and_bad_arguments() -> None:
    from importlib.metadata import version

    assert _iir("version").stdout.strip() == version("iir")
    for args in ([], ["frobnicate"], ["serve", "--port", "x"], ["keygen", "--length", "5"]):
        res = _iir(*args)
        assert res.returncode == 2, args
        assert "usage:" in res.stderr and "Traceback" not in res.stderr


def test_keygen_prints_env_lines() -> None:
    res = _iir("keygen", "--count", "2", "--env", "--prefix", "lab")
    assert res.returncode == 0
    line = res.stdout.strip()
    assert line.startswith("IIR_ALLOWED_KEYS=lab_")
    keys = line.split("=", 1)[1].split(",")
    assert len(keys) == 2 and keys[0] != keys[1]


def test_doctor_healthy_setup(tmp_path: Path) -> None:
    env_file = tmp_path / "iir.env"
    env_file.write_text("IIR_API_KEY=doctor-key-0123456789abcdef0123456789\n")
    env_file.chmod(0o600)
    with FakeProvider("openai", key="sk-doctor-0123456789") as fake:
        res = _iir(
            "doctor",
            "--env-file",
            str(env_file),
            env={
                "IIR_DATA_DIR": str(tmp_path),
                "OPENAI_API_KEY": "sk-doctor-0123456789",
                "IIR_OPENAI_BASE_URL": fake.url,
            },
        )
    assert res.returncode == 0, res.stdout + res.stderr
    rows = {line.split()[1]: line for line in res.stdout.splitlines()}
    assert rows["configuration"].startswith("ok")
    assert "answered 200" in res.stdout
    assert "not configured (set ANTHROPIC_API_KEY)" in res.stdout
    assert (
        "doctor-key-0123456789abcdef0123456789" not in res.stdout and "sk-doctor" not in res.stdout
    )
    assert "GPU (NVML)" in res.stdout


def test_doctor_fails_on_corrupt_database_and_dead_provider(tmp_path: Path) -> None:
    (tmp_path / "iir.db").write_bytes(b"this is not a database" * 100)
    res = _iir(
        "doctor",
        env={
            "IIR_API_KEY": "doctor-key-0123456789abcdef0123456789",
            "IIR_DATA_DIR": str(tmp_path),
            "OPENAI_API_KEY": "sk-doctor-0123456789",
            "IIR_OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        },
    )
    assert res.returncode == 1
    lines = res.stdout.splitlines()
    assert any(ln.startswith("FAIL") and "database" in ln for ln in lines)
    assert any(
        ln.startswith("FAIL") and "provider openai" in ln and "unreachable" in ln for ln in lines
    )


def test_doctor_reports_bad_configuration(tmp_path: Path) -> None:
    res = _iir("doctor", env={"IIR_DATA_DIR": str(tmp_path)})
    assert res.returncode == 1 and "FAIL" in res.stdout and "IIR_API_KEY" in res.stdout
    ok_db = tmp_path / "iir.db"
    sqlite3.connect(ok_db).execute("create table t(x)").connection.commit()
    res = _iir("doctor", env={"IIR_DATA_DIR": str(tmp_path), "IIR_API_KEY": "k" * 32})
    assert "ok    database" in res.stdout


def test_jobs_list_show_cancel(tmp_path: Path) -> None:
    import httpx

    from .harness import Server

    data = tmp_path / "data"
    with Server(data_dir=data, env={"IIR_ECHO_TOKEN_DELAY_MS": "200"}) as srv:
        body = {"model": "iir/echo", "messages": [{"role": "user", "content": "slow " * 50}]}
        job_id = httpx.post(
            srv.url + "/v1/async/chat/completions", json=body, headers=srv.auth
        ).json()["job_id"]
        listed = _iir("jobs", "list", "--data-dir", str(data))
        assert listed.returncode == 0 and job_id in listed.stdout
        assert "slow" not in listed.stdout  # summaries carry no payloads
        shown = _iir("jobs", "show", job_id, env={"IIR_DATA_DIR": str(data)})
        assert shown.returncode == 0 and '"request"' in shown.stdout
        assert srv.key not in shown.stdout
        cancelled = _iir("jobs", "cancel", job_id, "--data-dir", str(data))
        assert cancelled.returncode == 0 and "-> cancelled" in cancelled.stdout
        again = _iir("jobs", "cancel", job_id, "--data-dir", str(data))
        assert "already cancelled" in again.stdout
        status = httpx.get(srv.url + f"/v1/async/chat/completions/{job_id}", headers=srv.auth)
        assert status.json()["status"] == "cancelled"
    missing = _iir("jobs", "show", "job_" + "0" * 32, "--data-dir", str(data))
    assert missing.returncode == 1 and "no job" in missing.stderr
    bad = _iir("jobs", "list", "--status", "weird", "--data-dir", str(data))
    assert bad.returncode == 2 and "unknown status" in bad.stderr
    assert _iir("jobs").returncode == 2
