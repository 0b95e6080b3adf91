"""The whole configuration, checked before the server starts: the settings themselves
(:func:`iir.core.settings.load_settings`) and the settings that name other layers' data, which
those layers parse (the routing policy file, the secret rules file, the remote log sink)."""

from __future__ import annotations

import os
from collections.abc import Mapping

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
    return settings
