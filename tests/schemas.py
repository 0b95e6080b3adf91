"""Validation against OpenAI's official schemas, read from the shared schema file (never a copy)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jsonschema
import orjson

from .harness import REPO


@functools.cache
def _doc() -> dict[str, Any]:
    candidates = [Path(os.environ["IIR_SHARED_DIR"])] if os.environ.get("IIR_SHARED_DIR") else []
    candidates.append(REPO.parent / "shared")
    for base in candidates:
        path = base / "openai-schemas" / "openai-chat-schemas.json"
        if path.exists():
            return orjson.loads(path.read_bytes())
    raise FileNotFoundError("openai-chat-schemas.json not found (set IIR_SHARED_DIR)")


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    doc = _doc()
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def validate(body: Any, name: str) -> None:
    _validator(name).validate(body)


def validate_error(body: Any) -> None:
    """An IIR error: OpenAI's ErrorResponse plus the product's ``detail``."""
    validate(body, "ErrorResponse")
    assert isinstance(body["detail"], str) and body["detail"] == body["error"]["message"]
