"""Finding Hugging Face-format model folders under ``IIR_MODEL_DIR``.

A folder is a model when it holds ``config.json``, tokenizer files and weights. Folders are looked
for at depth one (``models/llama-3-8b``) and two (``models/meta-llama/Meta-Llama-3-8B-Instruct``),
and the folder's path under the model directory is the model's served name, so that a folder laid
out like the Hugging Face hub keeps the hub's id.

A folder is an embedding model (served by vLLM's pooling runner on ``/v1/embeddings``) when it is
a sentence-transformers folder (``modules.json``) or when its architectures are bare encoders
(``BertModel``, ``XLMRobertaModel``, ``Qwen3Model``: a name ending in ``Model`` without ``For`` or
``LMHead``), as vLLM's own runner detection reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")


@dataclass(frozen=True, slots=True)
class FoundModel:
    name: str
    path: Path
    problem: str | None = None  # why the folder cannot be loaded, when it cannot
    context_length: int | None = None
    runner: str = "generate"  # or "embed"


def context_length(config: dict[str, Any]) -> int | None:
    """The model's trained context length from its ``config.json`` (nested text configs too)."""
    for source in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        if not isinstance(source, dict):
            continue
        for key in _CONTEXT_KEYS:
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def runner(config: dict[str, Any], names: list[str]) -> str:
    """``embed`` for an embedding model's folder, ``generate`` otherwise."""
    if "modules.json" in names or "config_sentence_transformers.json" in names:
        return "embed"
    archs = config.get("architectures")
    if (
        isinstance(archs, list)
        and archs
        and all(
            isinstance(a, str) and a.endswith("Model") and "For" not in a and "LMHead" not in a
            for a in archs
        )
    ):
        return "embed"
    return "generate"


def inspect_folder(path: Path, name: str) -> FoundModel:
    try:
        config = orjson.loads((path / "config.json").read_bytes())
    except OSError as exc:
        return FoundModel(name, path, f"config.json cannot be read: {exc.strerror or exc}")
    except orjson.JSONDecodeError:
        return FoundModel(name, path, "config.json is not valid JSON")
    if not isinstance(config, dict):
        return FoundModel(name, path, "config.json is not a JSON object")
    ctx = context_length(config)
    try:
        names = [p.name for p in path.iterdir()]
    except OSError as exc:
        return FoundModel(name, path, f"folder cannot be listed: {exc.strerror or exc}", ctx)
    if not any(n in names for n in _TOKENIZER_FILES):
        return FoundModel(name, path, "no tokenizer files (tokenizer.json or tokenizer.model)", ctx)
    if not any(n.endswith(_WEIGHT_SUFFIXES) for n in names):
        return FoundModel(name, path, "no weights (*.safetensors or pytorch_model*.bin)", ctx)
    return FoundModel(name, path, None, ctx, runner(config, names))


def scan(root: Path) -> tuple[list[FoundModel], str | None]:
    """Model folders under ``root`` sorted by name, and a reason when ``root`` cannot be read."""
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except FileNotFoundError:
        return [], f"IIR_MODEL_DIR {str(root)!r} does not exist"
    except OSError as exc:
        return [], f"IIR_MODEL_DIR {str(root)!r} cannot be read: {exc.strerror or exc}"
    found: list[FoundModel] = []
    for child in children:
        if (child / "config.json").is_file():
            found.append(inspect_folder(child, child.name))
            continue
        try:
            grandchildren = sorted(
                p for p in child.iterdir() if p.is_dir() and not p.name.startswith(".")
            )
        except OSError:
            continue
        for sub in grandchildren:
            if (sub / "config.json").is_file():
                found.append(inspect_folder(sub, f"{child.name}/{sub.name}"))
    return found, None
