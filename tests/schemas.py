"""Validation against OpenAI's official schemas, vendored in ``tests/data/openai-schemas.json``.

The file holds every component schema of the OpenAI API bodies IIR serves (chat completions,
models, errors, the Responses API, embeddings, legacy completions) with what they reference; see
``tests/data/README.md`` for its source and licence. Validate a body against any component by name:
``validate(body, "CreateEmbeddingResponse")``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import orjson

SCHEMA_FILE = Path(__file__).resolve().parent / "data" / "openai-schemas.json"


@functools.cache
def _doc() -> dict[str, Any]:
    return orjson.loads(SCHEMA_FILE.read_bytes())


def names() -> list[str]:
    """Every component schema name the file holds."""
    return sorted(_doc()["components"]["schemas"])


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    doc = _doc()
    if name not in doc["components"]["schemas"]:
        raise KeyError(f"no component schema named {name!r} in {SCHEMA_FILE.name}")
    # Rooted at the file's components so that every internal #/components/schemas/... resolves.
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def validate(body: Any, name: str) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``body`` matches the component ``name``."""
    _validator(name).validate(body)


def validate_error(body: Any) -> None:
    """An IIR error: OpenAI's ErrorResponse plus the product's ``detail``."""
    validate(body, "ErrorResponse")
    assert isinstance(body["detail"], str) and body["detail"] == body["error"]["message"]
