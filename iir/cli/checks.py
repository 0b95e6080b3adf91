"""The whole configuration, checked before the server starts: the settings themselves
(:func:`iir.core.settings.load_settings`) and the settings that name other layers' data, which
those layers parse (the routing policy file, the secret rules file, the remote log sink, the TLS
files, the providers' URLs)."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

from iir.backends.providers.catalog import PROVIDERS
from iir.core.settings import ConfigError, Settings, load_settings
from iir.ops.logforward import parse_sink
from iir.policy.routing.rules import PolicyError, load_policy
from iir.policy.scrub import RulesFileError, load_rules_file


def load_config(
    environ: Mapping[str, str] | None = None, env_file: str | os.PathLike[str] | None = None
) -> Settings:
    """Settings that the server can start with; ConfigError names the variable otherwise."""
    settings = load_settings(environ, env_file)
    try:
        load_policy(settings.routing_file)  # refuse a bad file now, not at the first request
    except PolicyError as exc:
        raise ConfigError(
            f"IIR_ROUTING_FILE={settings.routing_file or '(built-in)'}: {exc}"
        ) from None
    if settings.scrub_rules_file:
        try:
            load_rules_file(settings.scrub_rules_file)
        except RulesFileError as exc:
            raise ConfigError(f"IIR_SCRUB_RULES_FILE={exc}") from None
    if settings.remote_log_sink:
        try:
            parse_sink(settings.remote_log_sink)
        except ValueError as exc:
            raise ConfigError(f"REMOTE_LOG_SINK: {exc}") from None
    check_tls(settings)
    _check_fleet_clients(settings)
    if not settings.allow_insecure_upstream:
        insecure = insecure_upstreams(settings.env)
        if insecure:
            raise ConfigError(
                f"{insecure[0]} would send a provider key over plain http:// to another host; "
                "use https://, or set IIR_ALLOW_INSECURE_UPSTREAM=true to accept that"
            )
    return settings


def check_tls(settings: Settings) -> None:
    """Both files or neither, and a pair that loads (the same load Granian does at start-up)."""
    cert, key = settings.tls_cert, settings.tls_key
    if cert is None and key is None:
        return
    if cert is None or key is None:
        given, missing = (
            ("IIR_TLS_CERT", "IIR_TLS_KEY") if key is None else ("IIR_TLS_KEY", "IIR_TLS_CERT")
        )
        raise ConfigError(f"{given} is set but {missing} is not; TLS needs both")
    for name, path in (("IIR_TLS_CERT", cert), ("IIR_TLS_KEY", key)):
        try:
            path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{name}={str(path)!r} cannot be read: {exc.strerror}") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"IIR_TLS_CERT/IIR_TLS_KEY: not a matching PEM certificate and private key ({exc})"
        ) from None


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``: traffic that never
    leaves this machine."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_upstreams(env: Mapping[str, str]) -> list[str]:
    """``VARIABLE (http://host)`` for every provider that has a key and a plain http:// base URL to a host
    other than this machine."""
    out = []
    for cls in PROVIDERS:
        key = next((env[v].strip() for v in cls.key_vars if env.get(v, "").strip()), "")
        url = env.get(cls.base_var, "").strip() or cls.default_base_url or ""
        if not key or not url.lower().startswith("http://"):
            continue
        host = urlsplit(url).hostname or ""
        if not is_loopback_host(host):
            out.append(f"{cls.base_var} (http://{host})")  # the URL may hold a password
    return out


def _check_fleet_clients(settings: Settings) -> None:
    """A fleet setting needs its client library (the ``fleet`` extra): say so before start-up
    rather than fail in the worker."""
    needs = (
        ("IIR_STATE_URL", settings.state_url, ("redis",)),
        ("IIR_JOB_STORE_URL", settings.job_store_url, ("psycopg", "psycopg_pool")),
    )
    for var, value, modules in needs:
        if not value:
            continue
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(
                f"{var} is set but {', '.join(missing)} is not installed: "
                "install IIR with its fleet extra (pip install 'iir[fleet]')"
            )
