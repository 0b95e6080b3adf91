"""The operator's routing policy: which models routing may pick, what each can do, what it costs.

Read once at start-up from ``IIR_ROUTING_FILE`` (TOML) or from the built-in ``default.toml`` next
to this module. Every mistake in the file (a typo'd key, a tier out of range, an unknown category)
is refused with a message naming the place, because a policy that silently ignores a line routes
requests somewhere the operator did not mean.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iir.policy.routing.classifier import CATEGORIES

DEFAULT_FILE = Path(__file__).with_name("default.toml")
LOCAL_WILDCARD = "@local"  # every model the box's own engine serves
MAX_TIER = 5


class PolicyError(Exception):
    """The routing file cannot be used; the message names the key at fault."""


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    name: str
    local: bool
    context_length: int
    tools: bool
    vision: bool
    structured_output: bool
    cost_input: float  # USD per million prompt tokens
    cost_output: float  # USD per million completion tokens
    quality: Mapping[str, int]  # tier per category, 0 (never) .. 5 (best)

    def tier(self, category: str) -> int:
        return self.quality[category]

    def cost(self, prompt_tokens: int, output_tokens: int) -> float:
        """Estimated price of one request in USD."""
        return (prompt_tokens * self.cost_input + output_tokens * self.cost_output) / 1e6


@dataclass(frozen=True, slots=True)
class Policy:
    models: tuple[ModelPolicy, ...]
    send_out: frozenset[str]  # categories local-first sends to a remote model
    default_output_tokens: int  # assumed when a request sets no max_tokens
    explicit_fallbacks: bool  # whether explicit model requests get routed fallbacks
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "send_out": sorted(self.send_out),
            "default_output_tokens": self.default_output_tokens,
            "explicit_fallbacks": self.explicit_fallbacks,
            "models": [m.name for m in self.models],
        }


_ROUTING_KEYS = {"send_out", "default_output_tokens", "explicit_fallbacks"}
_MODEL_KEYS = {
    "name",
    "local",
    "context_length",
    "tools",
    "vision",
    "structured_output",
    "cost",
    "quality",
}


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise PolicyError(
            f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )


def _bool(table: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise PolicyError(f"{where}.{key} must be true or false")
    return value


def _int(table: Mapping[str, Any], key: str, default: int | None, lo: int, where: str) -> int:
    value = table.get(key, default)
    if value is None:
        raise PolicyError(f"{where}.{key} is required")
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise PolicyError(f"{where}.{key} must be a whole number of at least {lo}")
    return value


def _model(raw: Any, index: int) -> ModelPolicy:
    where = f"models[{index}]"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be a table")
    _check_keys(raw, _MODEL_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or not name.isprintable():
        raise PolicyError(f"{where}.name must be a non-empty model name")
    where = f"models[{index}] ({name})"
    local = _bool(raw, "local", name == LOCAL_WILDCARD, where)
    if name == LOCAL_WILDCARD and not local:
        raise PolicyError(f"{where}: {LOCAL_WILDCARD} stands for local models; local must be true")
    cost = raw.get("cost", {})
    if not isinstance(cost, dict):
        raise PolicyError(f"{where}.cost must be a table {{ input = ..., output = ... }}")
    _check_keys(cost, {"input", "output"}, f"{where}.cost")
    prices: list[float] = []
    for key in ("input", "output"):
        value = cost.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e6:
            raise PolicyError(f"{where}.cost.{key} must be a price in USD per million tokens, >= 0")
        prices.append(float(value))
    quality_raw = raw.get("quality", {})
    if not isinstance(quality_raw, dict):
        raise PolicyError(f"{where}.quality must be a table of tiers per category")
    _check_keys(quality_raw, {*CATEGORIES, "default"}, f"{where}.quality")
    tiers: dict[str, int] = {}
    for key, value in quality_raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIER:
            raise PolicyError(f"{where}.quality.{key} must be a tier from 0 to {MAX_TIER}")
        tiers[key] = value
    default_tier = tiers.pop("default", 1)
    quality = {c: tiers.get(c, default_tier) for c in CATEGORIES}
    return ModelPolicy(
        name=name.strip(),
        local=local,
        context_length=_int(raw, "context_length", None, 1, where),
        tools=_bool(raw, "tools", False, where),
        vision=_bool(raw, "vision", False, where),
        structured_output=_bool(raw, "structured_output", False, where),
        cost_input=prices[0],
        cost_output=prices[1],
        quality=quality,
    )


def parse_policy(text: str, source: str) -> Policy:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"not valid TOML: {exc}") from None
    _check_keys(doc, {"routing", "models"}, "top level")
    routing = doc.get("routing", {})
    if not isinstance(routing, dict):
        raise PolicyError("[routing] must be a table")
    _check_keys(routing, _ROUTING_KEYS, "[routing]")
    send_out = routing.get("send_out", [])
    if not isinstance(send_out, list) or not all(isinstance(c, str) for c in send_out):
        raise PolicyError("[routing].send_out must be a list of category names")
    for c in send_out:
        if c not in CATEGORIES:
            raise PolicyError(
                f"[routing].send_out: unknown category {c!r} (known: {', '.join(CATEGORIES)})"
            )
    models_raw = doc.get("models", [])
    if not isinstance(models_raw, list):
        raise PolicyError("models must be an array of tables ([[models]])")
    models = tuple(_model(raw, i) for i, raw in enumerate(models_raw))
    names = [m.name for m in models]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise PolicyError(f"models: {dup!r} is listed twice")
    return Policy(
        models=models,
        send_out=frozenset(send_out),
        default_output_tokens=_int(routing, "default_output_tokens", 512, 1, "[routing]"),
        explicit_fallbacks=_bool(routing, "explicit_fallbacks", False, "[routing]"),
        source=source,
    )


def load_policy(path: str | Path | None) -> Policy:
    """The policy in ``path``, or the built-in one when ``path`` is None."""
    p = Path(path) if path is not None else DEFAULT_FILE
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read {str(p)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{str(p)!r} is not UTF-8 text") from None
    return parse_policy(text, "built-in" if path is None else str(p))
