"""Keys that can be guessed, keys that cross the network in clear text: refused at start-up.

TLS is tested end to end: a self-signed pair made with ``openssl req -x509`` (the line docs/security.md
documents), the real server with ``IIR_TLS_CERT``/``IIR_TLS_KEY``, and the ``openai`` SDK trusting
that certificate as its CA.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import openai
import pytest

from iir.cli.checks import insecure_upstreams, is_loopback_host, load_config
from iir.core.settings import MIN_KEY_LENGTH, ConfigError, load_settings, weak_keys

from .harness import IIR, Server, free_port

STRONG = "s" * MIN_KEY_LENGTH


def _serve(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("IIR_")}
    base.update({"IIR_DATA_DIR": str(tmp_path / "data"), **env})
    return subprocess.run(
        [IIR, "serve", "--port", str(free_port())],
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- key strength -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"IIR_API_KEY": "short-key-123"}, "IIR_API_KEY"),
        ({"IIR_API_KEY": STRONG, "IIR_ALLOWED_KEYS": f"{STRONG}x,tiny"}, "IIR_ALLOWED_KEYS"),
        ({"IIR_API_KEY": STRONG, "IIR_METRICS_KEY": "scrape-me"}, "IIR_METRICS_KEY"),
        ({"IIR_API_KEY": "k" * (MIN_KEY_LENGTH - 1)}, "IIR_API_KEY"),
    ],
)
def test_weak_keys_stop_start_up_naming_the_variable(
    env: dict[str, str], variable: str, tmp_path: Path
) -> None:
    res = _serve(env, tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and "IIR_ALLOW_WEAK_KEYS" in lines[0]
    for key in [*env.values(), "tiny"]:
        if key != STRONG and len(key) < MIN_KEY_LENGTH:
            assert key not in res.stderr  # the key itself is never shown


def test_weak_keys_are_accepted_for_development_only_when_asked() -> None:
    weak = "dev-key"
    with Server(key=weak, env={"IIR_ALLOW_WEAK_KEYS": "true"}) as s, s.client() as c:
        assert c.get("/v1/models", headers=s.auth).status_code == 200
    with pytest.raises(ConfigError, match="IIR_API_KEY has 7 characters"):
        load_settings({"IIR_API_KEY": weak})


def test_exactly_the_minimum_is_strong() -> None:
    assert load_settings({"IIR_API_KEY": "k" * MIN_KEY_LENGTH}).api_keys == ("k" * 32,)
    assert weak_keys({"IIR_ALLOWED_KEYS": f"{'a' * 40}, b ,{'c' * 31}"}) == [
        "IIR_ALLOWED_KEYS key 2 of 3 has 1 characters",
        "IIR_ALLOWED_KEYS key 3 of 3 has 31 characters",
    ]


def test_metrics_key_with_whitespace_is_refused() -> None:
    with pytest.raises(ConfigError, match="IIR_METRICS_KEY"):
        load_settings({"IIR_API_KEY": STRONG, "IIR_METRICS_KEY": "a" * 20 + "\x01" + "b" * 20})


def test_doctor_reports_weak_keys(tmp_path: Path) -> None:
    def doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("IIR_")}
        base.update({"IIR_DATA_DIR": str(tmp_path), "IIR_HOST": "127.0.0.1", **env})
        return subprocess.run(
            [IIR, "doctor", "--timeout", "1"], env=base, capture_output=True, text=True, timeout=60
        )

    refused = doctor({"IIR_API_KEY": "short-one"})
    assert refused.returncode == 1
    assert "FAIL  configuration" in refused.stdout and "IIR_API_KEY has 9" in refused.stdout
    allowed = doctor({"IIR_API_KEY": "short-one", "IIR_ALLOW_WEAK_KEYS": "true"})
    line = next(ln for ln in allowed.stdout.splitlines() if "key strength" in ln)
    assert line.startswith("warn") and "IIR_API_KEY has 9 characters" in line
    assert "short-one" not in allowed.stdout
    strong = doctor({"IIR_API_KEY": STRONG, "IIR_TRUSTED_PROXIES": "10.0.0.0/8"})
    assert any(ln.startswith("ok") and "key strength" in ln for ln in strong.stdout.splitlines())
    assert any(ln.startswith("warn") and "10.0.0.0/8" in ln for ln in strong.stdout.splitlines()), (
        strong.stdout
    )


# --- provider keys over plain http ------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.8.7", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("[::1]", True),
        ("::1", True),
        ("10.0.0.5", False),
        ("192.168.1.20", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("[::ffff:10.0.0.1]", False),
        ("0.0.0.0", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_insecure_upstreams_only_where_a_key_leaves_the_machine() -> None:
    key = {"OPENAI_API_KEY": "sk-test-" + "x" * 40}
    assert insecure_upstreams({**key, "IIR_OPENAI_BASE_URL": "http://10.0.0.5:8000/v1"}) == [
        "IIR_OPENAI_BASE_URL (http://10.0.0.5)"
    ]
    # https, loopback, or no key to leak: nothing to refuse.
    assert insecure_upstreams({**key, "IIR_OPENAI_BASE_URL": "https://10.0.0.5/v1"}) == []
    assert insecure_upstreams({**key, "IIR_OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}) == []
    assert insecure_upstreams({**key, "IIR_OPENAI_BASE_URL": "HTTP://localhost:9/v1"}) == []
    assert insecure_upstreams({**key, "IIR_OPENAI_BASE_URL": "http://[::1]:9/v1"}) == []
    assert insecure_upstreams({"IIR_OPENLLAMA_BASE_URL": "http://10.0.0.7:8080/v1"}) == []
    # A keyed provider whose URL holds a password: the message names the host only.
    both = insecure_upstreams(
        {
            "OPENROUTER_API_KEY": "sk-or-" + "y" * 40,
            "IIR_OPENROUTER_BASE_URL": "http://user:hunter2@gw.example.com/api/v1",
        }
    )
    assert both == ["IIR_OPENROUTER_BASE_URL (http://gw.example.com)"]


def test_insecure_upstream_stops_start_up_unless_allowed(tmp_path: Path) -> None:
    env = {
        "IIR_API_KEY": STRONG,
        "OPENAI_API_KEY": "sk-test-" + "x" * 40,
        "IIR_OPENAI_BASE_URL": "http://gateway.example.com/v1",
    }
    res = _serve(env, tmp_path)
    assert res.returncode == 2
    assert "IIR_OPENAI_BASE_URL" in res.stderr and "IIR_ALLOW_INSECURE_UPSTREAM" in res.stderr
    assert "sk-test-" not in res.stderr
    settings = load_config({**env, "IIR_ALLOW_INSECURE_UPSTREAM": "true"})
    assert settings.allow_insecure_upstream


# --- TLS on the listener ----------------------------------------------------------------------


def make_self_signed(folder: Path, name: str = "iir") -> tuple[Path, Path]:
    """The line in docs/security.md: a self-signed certificate for this host's names and loopback."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make a test certificate"
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_openai_sdk_over_tls_with_a_custom_ca(tmp_path: Path) -> None:
    cert, key = make_self_signed(tmp_path)
    env = {"IIR_TLS_CERT": str(cert), "IIR_TLS_KEY": str(key)}
    with Server(env=env) as s:
        assert s.url.startswith("https://")
        with httpx.Client(verify=ssl.create_default_context(cafile=cert)) as http:
            client = openai.OpenAI(
                base_url=s.url + "/v1", api_key=s.key, http_client=http, max_retries=0
            )
            answer = client.chat.completions.create(
                model="iir/echo", messages=[{"role": "user", "content": "over tls"}]
            )
            assert answer.choices[0].message.content == "over tls"
            chunks = client.chat.completions.create(
                model="iir/echo",
                messages=[{"role": "user", "content": "streamed too"}],
                stream=True,
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == "streamed too"
        # A client that does not trust the certificate does not get through.
        with pytest.raises(httpx.ConnectError):
            httpx.get(s.url + "/health")
        # Nor does one speaking plain http to the TLS port.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{s.port}/v1/models", headers=s.auth, timeout=5)


def test_tls_misconfiguration_stops_start_up(tmp_path: Path) -> None:
    cert, key = make_self_signed(tmp_path)
    other_cert, _ = make_self_signed(tmp_path, "other")
    cases = [
        ({"IIR_TLS_CERT": str(cert)}, "IIR_TLS_KEY"),
        ({"IIR_TLS_KEY": str(key)}, "IIR_TLS_CERT"),
        ({"IIR_TLS_CERT": str(tmp_path / "missing.crt"), "IIR_TLS_KEY": str(key)}, "IIR_TLS_CERT"),
        ({"IIR_TLS_CERT": str(other_cert), "IIR_TLS_KEY": str(key)}, "IIR_TLS_CERT/IIR_TLS_KEY"),
        ({"IIR_TLS_CERT": str(key), "IIR_TLS_KEY": str(cert)}, "IIR_TLS_CERT/IIR_TLS_KEY"),
    ]
    for env, variable in cases:
        res = _serve({"IIR_API_KEY": STRONG, **env}, tmp_path)
        assert res.returncode == 2, (env, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and variable in lines[0], (env, res.stderr)
        assert "BEGIN" not in res.stderr  # no key material in the message
