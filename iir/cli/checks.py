"""The whole configuration, checked before the server starts: the settings themselves
(:func:`iir.core.settings.load_settings`) and the settings that name other layers' data, which
those layers parse (the routing policy file, the remote log sink)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

from iir.core.settings import ConfigError, Settings, load_settings
from iir.ops.logforward import parse_sink
from iir.policy.routing.rules import PolicyError, load_policy


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
    if settings.remote_log_sink:
        try:
            parse_sink(settings.remote_log_sink)
        except ValueError as exc:
            raise ConfigError(f"REMOTE_LOG_SINK: {exc}") from None
    _check_fleet_clients(settings)
    return settings


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
