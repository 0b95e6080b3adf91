"""The configuration reference is checked against the settings model: every variable the model
reads is documented with its real default, and the documentation names no variable IIR ignores."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from iir.core.settings import PROVIDER_URL_VARS, Settings, UpstreamSettings, VllmSettings

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"
# Read by IIR outside the settings model (keys of providers, the env file of the worker).
ELSEWHERE = {
    "IIR_API_KEY",
    "IIR_ALLOWED_KEYS",
    *PROVIDER_URL_VARS,
    "IIR_ENV_FILE",
}
_ROW = re.compile(r"^\|\s*(`[A-Z][A-Z0-9_]*`(?:\s*/\s*`[A-Z0-9_]+`)*)\s*\|\s*([^|]*)\|", re.M)


def _documented() -> dict[str, str]:
    """Variable -> the default cell of its table row (``A`` / ``_B`` rows split in two)."""
    text = DOC.read_text()
    out: dict[str, str] = {}
    for names_cell, default_cell in _ROW.findall(text):
        names = re.findall(r"`([A-Z0-9_]+)`", names_cell)
        defaults = [d.strip() for d in default_cell.split(" / ")]
        first = names[0]
        for i, name in enumerate(names):
            if name.startswith("_"):  # `IIR_UPSTREAM_BACKOFF_BASE` / `_MAX`
                name = first.rsplit("_", 1)[0] + name
            out[name] = defaults[i] if len(defaults) == len(names) else default_cell.strip()
    return out


def _fields() -> dict[str, Any]:
    out = {}
    for model in (Settings, UpstreamSettings, VllmSettings):
        for field in model.model_fields.values():
            if isinstance(field.validation_alias, str):
                out[field.validation_alias] = field.get_default(call_default_factory=True)
    return out


def _same(default: Any, cell: str) -> bool:
    cell = cell.replace("`", "").strip()
    if default in (None, "", (), {}):
        return not re.fullmatch(r"-?[\d.]+", cell)
    if isinstance(default, Path):
        return Path(cell) == default
    if isinstance(default, bool):
        return cell == str(default).lower()
    if isinstance(default, int | float):
        return re.fullmatch(r"-?[\d.]+", cell) is not None and float(cell) == float(default)
    return cell == str(default)


def test_every_setting_is_documented_with_its_default() -> None:
    documented = _documented()
    fields = _fields()
    missing = sorted(set(fields) - set(documented))
    assert not missing, f"settings without a documented variable: {missing}"
    wrong = {
        name: (default, documented[name])
        for name, default in fields.items()
        if not _same(default, documented[name])
    }
    assert not wrong, f"documented defaults that differ from the settings: {wrong}"


def test_no_documented_variable_is_ignored() -> None:
    unknown = sorted(
        name
        for name in _documented()
        if name.startswith("IIR_") and name not in _fields() and name not in ELSEWHERE
    )
    assert not unknown, f"documented variables IIR does not read: {unknown}"
