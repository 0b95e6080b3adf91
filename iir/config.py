"""Settings from the environment, optionally backed by an env file.

The environment wins over the file, so an operator can override one value of
``/etc/iir/iir.env`` for a single run. Any bad value stops start-up (exit code 2) with one line
naming the variable, because a gateway that starts half-configured fails later and less clearly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(Exception):
    """A configuration value that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    data_dir: Path = Path("./var")
    max_body_bytes: int = 4 * 1024 * 1024
    log_level: str = "info"
    shutdown_timeout: float = 30.0
    echo_token_delay_ms: float = 0.0
    # Routing for model "auto" (iir.routing): the policy file (None: the built-in one), the default
    # strategy, the local queue depth above which local-first goes remote, the model assumed when
    # a request names none (None: the model field is required).
    routing_file: Path | None = None
    routing_strategy: str = "local-first"
    local_max_queue: int = 8
    default_model: str | None = None
    routing_policy: Any = field(default=None, repr=False)  # iir.routing.policy.Policy
    # The merged environment (file values overlaid by the process environment): providers and the
    # secret scrubber read their own variables from here.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    p = Path(path)
    try:
        with p.open("r", encoding="utf-8") as fh:
            fh.read(1)
    except OSError as exc:
        raise ConfigError(f"env file {str(p)!r} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"env file {str(p)!r} is not UTF-8 text") from None
    return {k: v for k, v in dotenv_values(p).items() if v is not None}


def merged_env(
    environ: Mapping[str, str], env_file: str | os.PathLike[str] | None
) -> dict[str, str]:
    merged = read_env_file(env_file) if env_file else {}
    merged.update(environ)
    return merged


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ConfigError(f"{name}={value} must be {bound}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value >= lo or value == float("inf"):
        raise ConfigError(f"{name}={raw} must be a finite number of at least {lo:g}")
    return value


def _keys(env: Mapping[str, str]) -> tuple[str, ...]:
    keys: list[str] = []
    single = env.get("IIR_API_KEY", "").strip()
    if "IIR_API_KEY" in env and not single:
        raise ConfigError("IIR_API_KEY is set but empty")
    if single:
        keys.append(single)
    if "IIR_ALLOWED_KEYS" in env:
        extra = [k.strip() for k in env["IIR_ALLOWED_KEYS"].split(",")]
        extra = [k for k in extra if k]
        if not extra:
            raise ConfigError("IIR_ALLOWED_KEYS is set but holds no key (comma-separated list)")
        keys.extend(extra)
    for k in keys:
        if any(c.isspace() for c in k) or not k.isprintable():
            raise ConfigError(
                "IIR_API_KEY/IIR_ALLOWED_KEYS: a key holds whitespace or control characters"
            )
    if not keys:
        raise ConfigError(
            "no API key configured: set IIR_API_KEY (or IIR_ALLOWED_KEYS); "
            "generate one with `iir keygen`"
        )
    return tuple(dict.fromkeys(keys))


def _routing(env: Mapping[str, str]) -> dict[str, object]:
    from .routing.policy import STRATEGIES, PolicyError, load_policy

    strategy = env.get("IIR_ROUTING_STRATEGY", "").strip().lower() or "local-first"
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"IIR_ROUTING_STRATEGY={strategy!r} must be one of {', '.join(STRATEGIES)}"
        )
    raw_file = env.get("IIR_ROUTING_FILE", "").strip()
    routing_file = Path(raw_file) if raw_file else None
    try:
        policy = load_policy(routing_file)  # refuse a bad file now, not at the first request
    except PolicyError as exc:
        raise ConfigError(f"IIR_ROUTING_FILE={raw_file or '(built-in)'}: {exc}") from None
    default_model = env.get("IIR_DEFAULT_MODEL", "").strip() or None
    if default_model is not None and (len(default_model) > 256 or not default_model.isprintable()):
        raise ConfigError("IIR_DEFAULT_MODEL must be a model name of at most 256 characters")
    return {
        "routing_file": routing_file,
        "routing_strategy": strategy,
        "local_max_queue": _int(env, "IIR_LOCAL_MAX_QUEUE", 8, 0),
        "default_model": default_model,
        "routing_policy": policy,
    }


def load_settings(
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = None,
) -> Settings:
    env = merged_env(os.environ if environ is None else environ, env_file)
    level = env.get("IIR_LOG_LEVEL", "info").strip().lower() or "info"
    if level not in LOG_LEVELS:
        raise ConfigError(f"IIR_LOG_LEVEL={level!r} must be one of {', '.join(LOG_LEVELS)}")
    host = env.get("IIR_HOST", "127.0.0.1").strip() or "127.0.0.1"
    data_dir = Path(env.get("IIR_DATA_DIR", "./var").strip() or "./var")
    return Settings(
        host=host,
        port=_int(env, "IIR_PORT", 8000, 0, 65535),
        api_keys=_keys(env),
        data_dir=data_dir,
        max_body_bytes=_int(env, "IIR_MAX_BODY_BYTES", 4 * 1024 * 1024, 1),
        log_level=level,
        shutdown_timeout=_float(env, "IIR_SHUTDOWN_TIMEOUT", 30.0, 0.0),
        echo_token_delay_ms=_float(env, "IIR_ECHO_TOKEN_DELAY_MS", 0.0, 0.0),
        **_routing(env),
        env=env,
    )
