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
class UpstreamSettings:
    """How IIR talks to remote providers: timeouts, retries, circuit breaker, fallbacks."""

    connect_timeout: float = 5.0
    first_byte_timeout: float = 120.0
    idle_timeout: float = 60.0
    retries: int = 2
    backoff_base: float = 0.25
    backoff_max: float = 8.0
    breaker_window: float = 30.0
    breaker_min_requests: int = 10
    breaker_failure_rate: float = 0.5
    breaker_open_seconds: float = 15.0
    models_refresh_seconds: float = 600.0
    models_timeout: float = 5.0
    anthropic_max_tokens: int = 4096
    # model -> ordered alternatives tried when it fails before any byte reached the client
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


# Base URLs a provider may be pointed at; each must be an http(s) URL.
PROVIDER_URL_VARS = (
    "IIR_OPENAI_BASE_URL",
    "IIR_ANTHROPIC_BASE_URL",
    "IIR_GROK_BASE_URL",
    "IIR_OPENROUTER_BASE_URL",
    "IIR_OPENLLAMA_BASE_URL",
)


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
    job_concurrency: int = 4
    job_queue_max: int = 10000
    job_ttl_seconds: int = 86400
    job_db_timeout: float = 5.0
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    # Local engine (vLLM in process) and the model registry; see README "Local engine and registry".
    local_models: tuple[tuple[str, str], ...] = ()  # (served name, path or hub id)
    model_dir: Path | None = None
    autoload_models: bool = False
    vllm: VllmSettings = field(default_factory=lambda: VllmSettings())
    rate_limit_per_ip: int = 600
    rate_limit_rpm_per_key: int = 0
    rate_limit_tpm_per_key: int = 0
    trusted_proxies: str = ""
    max_prompt_tokens: int = 0
    remote_log_sink: str = ""
    # The merged environment (file values overlaid by the process environment): providers and the
    # secret scrubber read their own variables from here.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class VllmSettings:
    """Engine arguments handed to vLLM's ``AsyncEngineArgs``; None leaves vLLM's default."""

    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_backend: str | None = None  # "mp" or "ray"
    dtype: str | None = None
    quantization: str | None = None
    enforce_eager: bool | None = None
    restart_backoff_s: float = 1.0
    # Which of vLLM's platforms local models need: "auto" (whatever vLLM detects), "cuda" or "cpu".
    device: str = "auto"
    # Tests only: "module:attr" naming a stand-in engine factory (see tests/fake_vllm.py).
    engine_factory: str | None = None


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


def _bool(env: Mapping[str, str], name: str, default: bool | None) -> bool | None:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} must be true or false (1/0, yes/no, on/off)")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if raw not in choices:
        raise ConfigError(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return raw


def _word(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not all(c.isalnum() or c in "_-." for c in raw):
        raise ConfigError(f"{name}={raw!r} must be a single word (letters, digits, _ - .)")
    return raw


def _local_models(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    raw = env.get("IIR_LOCAL_MODELS", "")
    out: list[tuple[str, str]] = []
    for item in (i.strip() for i in raw.split(",")):
        if not item:
            continue
        name, sep, path = item.partition("=")
        name, path = (name.strip(), path.strip()) if sep else (item, item)
        if not name or not path:
            raise ConfigError(
                f"IIR_LOCAL_MODELS: {item!r} must be 'path-or-id' or 'served-name=path-or-id'"
            )
        if any(n == name for n, _ in out):
            raise ConfigError(f"IIR_LOCAL_MODELS: the served name {name!r} is given twice")
        out.append((name, path))
    return tuple(out)


def _vllm(env: Mapping[str, str]) -> VllmSettings:
    util = _float(env, "IIR_VLLM_GPU_MEMORY_UTILIZATION", -1.0, 0.0)
    if util != -1.0 and not 0.0 < util <= 1.0:
        raise ConfigError(f"IIR_VLLM_GPU_MEMORY_UTILIZATION={util:g} must be above 0 and at most 1")
    max_len = (
        _int(env, "IIR_VLLM_MAX_MODEL_LEN", 0, 1)
        if env.get("IIR_VLLM_MAX_MODEL_LEN", "").strip()
        else None
    )
    factory = env.get("IIR_VLLM_ENGINE_FACTORY", "").strip() or None
    if factory is not None:
        module, sep, attr = factory.partition(":")
        if not sep or not module or not attr:
            raise ConfigError(f"IIR_VLLM_ENGINE_FACTORY={factory!r} must be 'module:attribute'")
    return VllmSettings(
        gpu_memory_utilization=None if util == -1.0 else util,
        max_model_len=max_len,
        tensor_parallel_size=_int(env, "IIR_VLLM_TENSOR_PARALLEL_SIZE", 1, 1, 1024),
        pipeline_parallel_size=_int(env, "IIR_VLLM_PIPELINE_PARALLEL_SIZE", 1, 1, 1024),
        distributed_backend=_choice(env, "IIR_VLLM_DISTRIBUTED_BACKEND", ("mp", "ray")),
        dtype=_choice(
            env, "IIR_VLLM_DTYPE", ("auto", "half", "float16", "bfloat16", "float", "float32")
        ),
        quantization=_word(env, "IIR_VLLM_QUANTIZATION"),
        enforce_eager=_bool(env, "IIR_VLLM_ENFORCE_EAGER", None),
        restart_backoff_s=_float(env, "IIR_VLLM_RESTART_BACKOFF_S", 1.0, 0.01),
        device=_choice(env, "IIR_VLLM_DEVICE", ("auto", "cuda", "cpu")) or "auto",
        engine_factory=factory,
    )


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


def _fallbacks(env: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """``IIR_FALLBACKS=model=alt1|alt2;other=alt3`` (whitespace around items is ignored)."""
    raw = env.get("IIR_FALLBACKS", "").strip()
    out: dict[str, tuple[str, ...]] = {}
    if not raw:
        return out
    for rule in raw.split(";"):
        rule = rule.strip()
        if not rule:
            continue
        model, sep, alts = rule.partition("=")
        model = model.strip()
        chain = tuple(a.strip() for a in alts.split("|") if a.strip())
        if not sep or not model or not chain:
            raise ConfigError(
                f"IIR_FALLBACKS: {rule!r} is not 'model=alternative|alternative' "
                "(rules are separated by ';')"
            )
        if model in out:
            raise ConfigError(f"IIR_FALLBACKS: {model!r} has two rules")
        if model in chain:
            raise ConfigError(f"IIR_FALLBACKS: {model!r} lists itself as its fallback")
        out[model] = tuple(dict.fromkeys(chain))
    return out


def _upstream(env: Mapping[str, str]) -> UpstreamSettings:
    for name in PROVIDER_URL_VARS:
        raw = env.get(name, "").strip()
        if raw and not (raw.startswith(("http://", "https://")) and len(raw.split("://", 1)[1])):
            raise ConfigError(f"{name}={raw!r} must be an http:// or https:// URL")
    rate = _float(env, "IIR_BREAKER_FAILURE_RATE", 0.5, 0.0)
    if not 0.0 < rate <= 1.0:
        raise ConfigError(f"IIR_BREAKER_FAILURE_RATE={rate:g} must be above 0 and at most 1")
    return UpstreamSettings(
        connect_timeout=_float(env, "IIR_UPSTREAM_CONNECT_TIMEOUT", 5.0, 0.001),
        first_byte_timeout=_float(env, "IIR_UPSTREAM_FIRST_BYTE_TIMEOUT", 120.0, 0.001),
        idle_timeout=_float(env, "IIR_UPSTREAM_IDLE_TIMEOUT", 60.0, 0.001),
        retries=_int(env, "IIR_UPSTREAM_RETRIES", 2, 0, 10),
        backoff_base=_float(env, "IIR_UPSTREAM_BACKOFF_BASE", 0.25, 0.0),
        backoff_max=_float(env, "IIR_UPSTREAM_BACKOFF_MAX", 8.0, 0.0),
        breaker_window=_float(env, "IIR_BREAKER_WINDOW", 30.0, 0.001),
        breaker_min_requests=_int(env, "IIR_BREAKER_MIN_REQUESTS", 10, 1),
        breaker_failure_rate=rate,
        breaker_open_seconds=_float(env, "IIR_BREAKER_OPEN_SECONDS", 15.0, 0.001),
        models_refresh_seconds=_float(env, "IIR_MODELS_REFRESH_SECONDS", 600.0, 1.0),
        models_timeout=_float(env, "IIR_MODELS_TIMEOUT", 5.0, 0.001),
        anthropic_max_tokens=_int(env, "IIR_ANTHROPIC_MAX_TOKENS", 4096, 1),
        fallbacks=_fallbacks(env),
    )


def _proxies(env: Mapping[str, str]) -> str:
    from .ratelimit import parse_trusted_proxies

    raw = env.get("IIR_TRUSTED_PROXIES", "")
    try:
        parse_trusted_proxies(raw)
    except ValueError as exc:
        raise ConfigError(f"IIR_TRUSTED_PROXIES: {exc}") from None
    return raw


def _log_sink(env: Mapping[str, str]) -> str:
    from .logforward import parse_sink

    raw = env.get("REMOTE_LOG_SINK", "").strip()
    if raw:
        try:
            parse_sink(raw)
        except ValueError as exc:
            raise ConfigError(f"REMOTE_LOG_SINK: {exc}") from None
    return raw


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
        job_concurrency=_int(env, "IIR_JOB_CONCURRENCY", 4, 1, 1024),
        job_queue_max=_int(env, "IIR_JOB_QUEUE_MAX", 10000, 1),
        job_ttl_seconds=_int(env, "IIR_JOB_TTL_SECONDS", 86400, 1),
        job_db_timeout=_float(env, "IIR_JOB_DB_TIMEOUT", 5.0, 0.0),
        upstream=_upstream(env),
        local_models=_local_models(env),
        model_dir=Path(env["IIR_MODEL_DIR"].strip())
        if env.get("IIR_MODEL_DIR", "").strip()
        else None,
        autoload_models=bool(_bool(env, "IIR_AUTOLOAD_MODELS", False)),
        vllm=_vllm(env),
        rate_limit_per_ip=_int(env, "IIR_RATE_LIMIT_PER_IP", 600, 0),
        rate_limit_rpm_per_key=_int(env, "IIR_RATE_LIMIT_RPM_PER_KEY", 0, 0),
        rate_limit_tpm_per_key=_int(env, "IIR_RATE_LIMIT_TPM_PER_KEY", 0, 0),
        trusted_proxies=_proxies(env),
        max_prompt_tokens=_int(env, "IIR_MAX_PROMPT_TOKENS", 0, 0),
        remote_log_sink=_log_sink(env),
        env=env,
    )
