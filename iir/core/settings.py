"""Settings from the environment, optionally backed by an env file (pydantic-settings).

The environment wins over the file, so an operator can override one value of
``/etc/iir/iir.env`` for a single run. Each setting is declared once, with its variable, default
and bounds; any bad value stops start-up (exit code 2) with one line naming the variable, because
a gateway that starts half-configured fails later and less clearly. Settings that belong to another
layer's data (the routing policy file, the secret rules file, the log sink) are checked by ``iir serve`` and
``iir doctor`` before the server starts (:mod:`iir.cli.checks`).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from dotenv import dotenv_values
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
#: Routing strategies (see :mod:`iir.policy.routing.router`); the first is the default.
STRATEGIES: tuple[str, ...] = ("local-first", "cost", "quality", "local-only", "remote-only")
Strategy = Literal["local-first", "cost", "quality", "local-only", "remote-only"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Base URLs a provider may be pointed at; each must be an http(s) URL.
PROVIDER_URL_VARS = (
    "IIR_OPENAI_BASE_URL",
    "IIR_ANTHROPIC_BASE_URL",
    "IIR_GROK_BASE_URL",
    "IIR_OPENROUTER_BASE_URL",
    "IIR_OPENLLAMA_BASE_URL",
)


class ConfigError(Exception):
    """A configuration value that cannot be used; the message names the variable."""


_OTHER_VARS = frozenset({"REMOTE_LOG_SINK"})

# The merged environment the settings are read from (see load_settings).
_ENV: ContextVar[Mapping[str, str] | None] = ContextVar("iir_settings_env", default=None)


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading the merged env instead of ``os.environ``."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Only IIR's own variables (a field's name never doubles as a variable); an empty or
        # blank value means "the default", as an unset one does.
        env = _ENV.get() or {}
        return {
            k: v for k, v in env.items() if (k.startswith("IIR_") or k in _OTHER_VARS) and v.strip()
        }


class _FromEnv(BaseSettings):
    """Each field names its variable with ``validation_alias``; empty values mean "default"."""

    model_config = SettingsConfigDict(
        case_sensitive=True,
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        str_strip_whitespace=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _MappingSource(settings_cls, case_sensitive=True))


def _var(name: str, default: Any = None, **bounds: Any) -> Any:
    return Field(default, validation_alias=name, **bounds)


Seconds = Annotated[float, Field(allow_inf_nan=False)]


class UpstreamSettings(_FromEnv):
    """How IIR talks to remote providers: timeouts, retries, circuit breaker, fallbacks."""

    connect_timeout: Seconds = _var("IIR_UPSTREAM_CONNECT_TIMEOUT", 5.0, ge=0.001)
    first_byte_timeout: Seconds = _var("IIR_UPSTREAM_FIRST_BYTE_TIMEOUT", 120.0, ge=0.001)
    idle_timeout: Seconds = _var("IIR_UPSTREAM_IDLE_TIMEOUT", 60.0, ge=0.001)
    retries: int = _var("IIR_UPSTREAM_RETRIES", 2, ge=0, le=10)
    backoff_base: Seconds = _var("IIR_UPSTREAM_BACKOFF_BASE", 0.25, ge=0.0)
    backoff_max: Seconds = _var("IIR_UPSTREAM_BACKOFF_MAX", 8.0, ge=0.0)
    breaker_window: Seconds = _var("IIR_BREAKER_WINDOW", 30.0, ge=0.001)
    breaker_min_requests: int = _var("IIR_BREAKER_MIN_REQUESTS", 10, ge=1)
    breaker_failure_rate: Seconds = _var("IIR_BREAKER_FAILURE_RATE", 0.5, gt=0.0, le=1.0)
    breaker_open_seconds: Seconds = _var("IIR_BREAKER_OPEN_SECONDS", 15.0, ge=0.001)
    models_refresh_seconds: Seconds = _var("IIR_MODELS_REFRESH_SECONDS", 600.0, ge=1.0)
    models_timeout: Seconds = _var("IIR_MODELS_TIMEOUT", 5.0, ge=0.001)
    anthropic_max_tokens: int = _var("IIR_ANTHROPIC_MAX_TOKENS", 4096, ge=1)
    #: The most bytes read from one upstream answer (after decompression); an SSE line may hold
    #: at most min(1 MiB, this).
    max_bytes: int = _var("IIR_UPSTREAM_MAX_BYTES", 32 * 1024 * 1024, ge=1024)
    #: model -> ordered alternatives tried when it fails before any byte reached the client
    fallbacks: Annotated[dict[str, tuple[str, ...]], NoDecode] = _var("IIR_FALLBACKS", {})

    @field_validator("fallbacks", mode="before")
    @classmethod
    def _fallbacks(cls, raw: Any) -> Any:
        return _parse_fallbacks(raw) if isinstance(raw, str) else raw


class VllmSettings(_FromEnv):
    """Engine arguments handed to vLLM's ``AsyncEngineArgs``; None leaves vLLM's default."""

    gpu_memory_utilization: float | None = _var(
        "IIR_VLLM_GPU_MEMORY_UTILIZATION", None, gt=0.0, le=1.0
    )
    max_model_len: int | None = _var("IIR_VLLM_MAX_MODEL_LEN", None, ge=1)
    tensor_parallel_size: int = _var("IIR_VLLM_TENSOR_PARALLEL_SIZE", 1, ge=1, le=1024)
    pipeline_parallel_size: int = _var("IIR_VLLM_PIPELINE_PARALLEL_SIZE", 1, ge=1, le=1024)
    distributed_backend: Literal["mp", "ray"] | None = _var("IIR_VLLM_DISTRIBUTED_BACKEND")
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] | None = _var(
        "IIR_VLLM_DTYPE"
    )
    quantization: str | None = _var("IIR_VLLM_QUANTIZATION", None, pattern=r"^[A-Za-z0-9_.\-]+$")
    enforce_eager: bool | None = _var("IIR_VLLM_ENFORCE_EAGER")
    restart_backoff_s: Seconds = _var("IIR_VLLM_RESTART_BACKOFF_S", 1.0, ge=0.01)
    #: Which of vLLM's platforms local models need: auto (whatever vLLM detects), cuda or cpu.
    device: Literal["auto", "cuda", "cpu"] = _var("IIR_VLLM_DEVICE", "auto")
    #: Tests only: "module:attr" naming a stand-in engine factory (see tests/fake_vllm.py).
    engine_factory: str | None = _var("IIR_VLLM_ENGINE_FACTORY", None, pattern=r"^[\w.]+:[\w.]+$")


class Settings(_FromEnv):
    host: str = _var("IIR_HOST", "127.0.0.1", min_length=1)
    port: int = _var("IIR_PORT", 8000, ge=0, le=65535)
    #: Every accepted API key: IIR_API_KEY, then IIR_ALLOWED_KEYS (comma-separated).
    api_keys: tuple[str, ...] = ()
    data_dir: Path = _var("IIR_DATA_DIR", Path("./var"))
    max_body_bytes: int = _var("IIR_MAX_BODY_BYTES", 4 * 1024 * 1024, ge=1)
    log_level: LogLevel = _var("IIR_LOG_LEVEL", "info")
    shutdown_timeout: Seconds = _var("IIR_SHUTDOWN_TIMEOUT", 30.0, ge=0.0)
    echo_token_delay_ms: Seconds = _var("IIR_ECHO_TOKEN_DELAY_MS", 0.0, ge=0.0)
    # Routing for model "auto" (iir.policy.routing): the policy file (None: the built-in one), the
    # default strategy, the local queue depth above which local-first goes remote, the model
    # assumed when a request names none (None: the model field is required).
    routing_file: Path | None = _var("IIR_ROUTING_FILE")
    # Extra secret rules in gitleaks' TOML format, besides the built-in table (None: none).
    scrub_rules_file: Path | None = _var("IIR_SCRUB_RULES_FILE")
    routing_strategy: Strategy = _var("IIR_ROUTING_STRATEGY", "local-first")
    local_max_queue: int = _var("IIR_LOCAL_MAX_QUEUE", 8, ge=0)
    default_model: str | None = _var(
        "IIR_DEFAULT_MODEL", None, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$"
    )
    # A model tried after every routed candidate, and alone when no policy model can serve: `make
    # run` sets it to iir/echo so that "auto" answers on a box with no model; unset, such a
    # request is a 503.
    routing_last_resort: str | None = _var(
        "IIR_ROUTING_LAST_RESORT", None, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$"
    )
    job_concurrency: int = _var("IIR_JOB_CONCURRENCY", 4, ge=1, le=1024)
    job_queue_max: int = _var("IIR_JOB_QUEUE_MAX", 10000, ge=1)
    job_ttl_seconds: int = _var("IIR_JOB_TTL_SECONDS", 86400, ge=1)
    job_db_timeout: Seconds = _var("IIR_JOB_DB_TIMEOUT", 5.0, ge=0.0)
    # A job found running at start-up this many times (the process died under it each time) fails.
    job_max_attempts: int = _var("IIR_JOB_MAX_ATTEMPTS", 3, ge=1, le=100)
    # Per API key: jobs not yet ended, and bytes stored (requests, results, errors).
    job_max_pending_per_key: int = _var("IIR_JOB_MAX_PENDING_PER_KEY", 1000, ge=1)
    job_max_bytes_per_key: int = _var("IIR_JOB_MAX_BYTES_PER_KEY", 1024**3, ge=1024)
    job_max_result_bytes: int = _var("IIR_JOB_MAX_RESULT_BYTES", 16 * 1024 * 1024, ge=1024)
    # A worker's write (start, finish) is retried this many times, then the job fails.
    job_write_retries: int = _var("IIR_JOB_WRITE_RETRIES", 10, ge=0, le=1000)
    response_ttl_seconds: int = _var("IIR_RESPONSE_TTL_SECONDS", 30 * 86400, ge=1)
    # Local engine (vLLM in process) and the model registry.
    local_models: Annotated[tuple[tuple[str, str], ...], NoDecode] = _var("IIR_LOCAL_MODELS", ())
    model_dir: Path | None = _var("IIR_MODEL_DIR")
    autoload_models: bool = _var("IIR_AUTOLOAD_MODELS", False)
    rate_limit_per_ip: int = _var("IIR_RATE_LIMIT_PER_IP", 600, ge=0)
    #: /health and /metrics: a budget of their own, so that probes keep working under load.
    probe_rate_limit_per_ip: int = _var("IIR_PROBE_RATE_LIMIT_PER_IP", 1200, ge=0)
    # Requests being served at once (streams included until their last byte); 0 disables.
    max_inflight_per_key: int = _var("IIR_MAX_INFLIGHT_PER_KEY", 64, ge=0)
    max_inflight_per_ip: int = _var("IIR_MAX_INFLIGHT_PER_IP", 128, ge=0)
    #: Deadline, from the first byte of the request, for its whole head and body.
    body_timeout: Seconds = _var("IIR_BODY_TIMEOUT", 30.0, gt=0.0, le=3600.0)
    rate_limit_rpm_per_key: int = _var("IIR_RATE_LIMIT_RPM_PER_KEY", 0, ge=0)
    rate_limit_tpm_per_key: int = _var("IIR_RATE_LIMIT_TPM_PER_KEY", 0, ge=0)
    trusted_proxies: Annotated[tuple[IPNetwork, ...], NoDecode] = _var("IIR_TRUSTED_PROXIES", ())
    max_prompt_tokens: int = _var("IIR_MAX_PROMPT_TOKENS", 0, ge=0)
    # The most text one answer may carry over all its choices (n x the output).
    max_answer_bytes: int = _var("IIR_MAX_ANSWER_BYTES", 64 * 1024 * 1024, ge=1024)
    #: A bearer key /metrics requires (none: /metrics is open, like /health).
    metrics_key: str | None = _var("IIR_METRICS_KEY", None, repr=False)
    #: How long one rendering of /metrics is served again (however many scrapers come).
    metrics_cache_seconds: Seconds = _var("IIR_METRICS_CACHE_SECONDS", 1.0, ge=0.0, le=60.0)
    #: Accept keys shorter than MIN_KEY_LENGTH (development only).
    allow_weak_keys: bool = _var("IIR_ALLOW_WEAK_KEYS", False)
    # TLS on the listener (Granian's own); both or neither.
    tls_cert: Path | None = _var("IIR_TLS_CERT")
    tls_key: Path | None = _var("IIR_TLS_KEY")
    #: Allow a provider key to travel over plain http:// to a host that is not this box.
    allow_insecure_upstream: bool = _var("IIR_ALLOW_INSECURE_UPSTREAM", False)
    remote_log_sink: str = _var("REMOTE_LOG_SINK", "")
    # A fleet of boxes (docs/fleet.md): limits on a shared Redis/Valkey, jobs on a shared
    # PostgreSQL, and peers that serve each other's models. Unset: a single box, as before.
    state_url: str | None = _var(
        "IIR_STATE_URL", None, pattern=r"^(redis|rediss|unix)://\S+$", repr=False
    )
    state_failure: Literal["local", "closed"] = _var("IIR_STATE_FAILURE", "local")
    state_timeout: Seconds = _var("IIR_STATE_TIMEOUT", 0.5, gt=0.0, le=60.0)
    job_store_url: str | None = _var(
        "IIR_JOB_STORE_URL", None, pattern=r"^postgres(ql)?://\S+$", repr=False
    )
    job_lease_seconds: Seconds = _var("IIR_JOB_LEASE_SECONDS", 30.0, ge=1.0, le=3600.0)
    peers: Annotated[tuple[str, ...], NoDecode] = _var("IIR_PEERS", ())
    peer_key: str | None = _var("IIR_PEER_KEY", None, min_length=16, repr=False)
    peer_poll_seconds: Seconds = _var("IIR_PEER_POLL_SECONDS", 2.0, ge=0.1, le=300.0)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    #: The merged environment (file values overlaid by the process environment): providers and
    #: the secret scrubber read their own variables from here.
    env: Mapping[str, str] = Field(default_factory=dict, repr=False)

    @field_validator("peers", mode="before")
    @classmethod
    def _peers(cls, raw: Any) -> Any:
        return parse_peers(raw) if isinstance(raw, str) else raw

    @field_validator("state_failure", mode="before")
    @classmethod
    def _lower_failure(cls, raw: Any) -> Any:
        return raw.lower() if isinstance(raw, str) else raw

    @field_validator("log_level", "routing_strategy", mode="before")
    @classmethod
    def _lower(cls, raw: Any) -> Any:
        return raw.lower() if isinstance(raw, str) else raw

    @field_validator("routing_last_resort", mode="before")
    @classmethod
    def _blank_is_unset(cls, raw: Any) -> Any:
        # ``IIR_ROUTING_LAST_RESORT=`` in an env file turns the last resort off.
        return None if isinstance(raw, str) and not raw.strip() else raw

    @field_validator("local_models", mode="before")
    @classmethod
    def _local_models(cls, raw: Any) -> Any:
        return _parse_local_models(raw) if isinstance(raw, str) else raw

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, raw: Any) -> Any:
        return parse_trusted_proxies(raw) if isinstance(raw, str) else raw


#: What a local model runs as, written ``name=path#embed``: generation (the default) or pooling.
RUNNERS = ("generate", "embed")


def _parse_local_models(raw: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for item in (i.strip() for i in raw.split(",")):
        if not item:
            continue
        name, sep, path = item.partition("=")
        name, path = (name.strip(), path.strip()) if sep else (item, item)
        if not sep and "#" in name:
            name = name.partition("#")[0].strip()
        if not name or not path:
            raise ValueError(f"{item!r} must be 'path-or-id' or 'served-name=path-or-id'")
        runner = path.partition("#")[2]
        if "#" in path and runner not in RUNNERS:
            raise ValueError(f"{item!r}: the runner after '#' must be one of {', '.join(RUNNERS)}")
        if any(n == name for n, _ in out):
            raise ValueError(f"the served name {name!r} is given twice")
        out.append((name, path))
    return tuple(out)


def _parse_fallbacks(raw: str) -> dict[str, tuple[str, ...]]:
    """``IIR_FALLBACKS=model=alt1|alt2;other=alt3`` (whitespace around items is ignored)."""
    out: dict[str, tuple[str, ...]] = {}
    for rule in raw.split(";"):
        rule = rule.strip()
        if not rule:
            continue
        model, sep, alts = rule.partition("=")
        model = model.strip()
        chain = tuple(a.strip() for a in alts.split("|") if a.strip())
        if not sep or not model or not chain:
            raise ValueError(
                f"{rule!r} is not 'model=alternative|alternative' (rules are separated by ';')"
            )
        if model in out:
            raise ValueError(f"{model!r} has two rules")
        if model in chain:
            raise ValueError(f"{model!r} lists itself as its fallback")
        out[model] = tuple(dict.fromkeys(chain))
    return out


def parse_peers(value: str) -> tuple[str, ...]:
    """``IIR_PEERS``: comma-separated base URLs of the other boxes (``https://box2:8000``)."""
    out: list[str] = []
    for raw in value.split(","):
        url = raw.strip().rstrip("/")
        if not url:
            continue
        scheme, sep, rest = url.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
            raise ValueError(
                f"invalid peer {url!r}: expected a base URL such as https://box2:8000 (no path)"
            )
        out.append(url)
    return tuple(dict.fromkeys(out))


def parse_trusted_proxies(value: str) -> tuple[IPNetwork, ...]:
    """A comma-separated list of IP addresses and CIDR networks; ValueError names a bad entry."""
    networks: list[IPNetwork] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"invalid trusted proxy {entry!r}: expected an IP address or CIDR network "
                "such as 10.0.0.1 or 10.0.0.0/8"
            ) from None
    return tuple(networks)


#: The widest trusted-proxy networks accepted without a warning: a /24 of IPv4 (256 addresses)
#: and a /64 of IPv6 (one LAN segment, what an IPv6 LAN gets where IPv4 gets a /24).
BROAD_PREFIX = {4: 24, 6: 64}


def broad_networks(networks: tuple[IPNetwork, ...]) -> list[IPNetwork]:
    """Trusted-proxy entries wider than :data:`BROAD_PREFIX`: every host in them may claim any
    client address in ``X-Forwarded-For`` (and so escape the per-IP limits)."""
    return [n for n in networks if n.prefixlen < BROAD_PREFIX[n.version]]


def _api_keys(env: Mapping[str, str]) -> tuple[str, ...]:
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


#: Shortest key accepted without IIR_ALLOW_WEAK_KEYS: ``iir keygen`` makes 40 random
#: characters; 32 keeps a guessed or reused password out while leaving room for other generators.
MIN_KEY_LENGTH = 32


def weak_keys(env: Mapping[str, str]) -> list[str]:
    """One line per key shorter than :data:`MIN_KEY_LENGTH`, naming its variable (never the key)."""
    out: list[str] = []
    single = env.get("IIR_API_KEY", "").strip()
    if single and len(single) < MIN_KEY_LENGTH:
        out.append(f"IIR_API_KEY has {len(single)} characters")
    extra = [k.strip() for k in env.get("IIR_ALLOWED_KEYS", "").split(",") if k.strip()]
    for i, key in enumerate(extra, 1):
        if len(key) < MIN_KEY_LENGTH:
            out.append(f"IIR_ALLOWED_KEYS key {i} of {len(extra)} has {len(key)} characters")
    metrics_key = env.get("IIR_METRICS_KEY", "").strip()
    if metrics_key and len(metrics_key) < MIN_KEY_LENGTH:
        out.append(f"IIR_METRICS_KEY has {len(metrics_key)} characters")
    return out


def _check_keys(settings: Settings, env: Mapping[str, str]) -> None:
    key = settings.metrics_key
    if key is not None and (any(c.isspace() for c in key) or not key.isprintable()):
        raise ConfigError("IIR_METRICS_KEY holds whitespace or control characters")
    weak = weak_keys(env)
    if weak and not settings.allow_weak_keys:
        raise ConfigError(
            f"{weak[0]}; keys need at least {MIN_KEY_LENGTH} (generate one with `iir keygen`, "
            "or set IIR_ALLOW_WEAK_KEYS=true for development)"
        )


def _check_provider_urls(env: Mapping[str, str]) -> None:
    for name in PROVIDER_URL_VARS:
        raw = env.get(name, "").strip()
        if raw and not (raw.startswith(("http://", "https://")) and len(raw.split("://", 1)[1])):
            raise ConfigError(f"{name}={raw!r} must be an http:// or https:// URL")


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


# Variables whose value is (or may hold) a secret: an error names them without their value.
_SECRET_VALUES = frozenset({"IIR_PEER_KEY", "IIR_STATE_URL", "IIR_JOB_STORE_URL"})


def _one_line(exc: ValidationError, env: Mapping[str, str]) -> str:
    """The first error as ``VARIABLE='value': what is wrong``."""
    err = exc.errors(include_url=False)[0]
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["loc"]:
        name = str(err["loc"][0])
        if name in env and name not in _SECRET_VALUES:
            return f"{name}={env[name].strip()!r}: {msg}"
        return f"{name}: {msg}"
    return msg


def load_settings(
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = None,
) -> Settings:
    """Reads every setting from ``environ`` (default: the process's) over ``env_file``."""
    env = merged_env(os.environ if environ is None else environ, env_file)
    _check_provider_urls(env)
    token = _ENV.set(env)
    try:
        settings = Settings(
            api_keys=_api_keys(env),
            upstream=UpstreamSettings(),
            vllm=VllmSettings(),
            env=env,
        )
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, env)) from None
    finally:
        _ENV.reset(token)
    if settings.peers and not settings.peer_key:
        raise ConfigError("IIR_PEERS is set but IIR_PEER_KEY is not: peers authenticate with it")
    _check_keys(settings, env)
    return settings
