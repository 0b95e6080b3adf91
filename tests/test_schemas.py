"""The vendored OpenAI schemas: intact, self-contained, and usable by any component name."""

from __future__ import annotations

import hashlib
import re

import jsonschema
import pytest

from . import schemas

README = schemas.SCHEMA_FILE.with_name("README.md")

# Bodies the next endpoints answer with must all be nameable.
NEEDED = [
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    "CreateResponse",
    "Response",
    "ResponseStreamEvent",
    "ResponseItemList",
    "CreateEmbeddingResponse",
    "CreateCompletionResponse",
]


def test_file_matches_the_digest_its_readme_records() -> None:
    recorded = re.findall(r"`([0-9a-f]{64})`", README.read_text())
    assert recorded, "tests/data/README.md must record the file's SHA-256"
    assert hashlib.sha256(schemas.SCHEMA_FILE.read_bytes()).hexdigest() in recorded


def test_licence_travels_with_the_file() -> None:
    licence = schemas.SCHEMA_FILE.with_name("LICENSE-openai-openapi").read_text()
    assert "MIT License" in licence and "OpenAI" in licence
    assert "LICENSE-openai-openapi" in README.read_text()


def test_every_reference_resolves_inside_the_file() -> None:
    text = schemas.SCHEMA_FILE.read_text()
    refs = set(re.findall(r'"\$ref"\s*:\s*"([^"]*)"', text))
    assert refs
    outside = sorted(r for r in refs if not r.startswith("#/components/schemas/"))
    assert outside == []
    missing = sorted({r.rsplit("/", 1)[1] for r in refs} - set(schemas.names()))
    assert missing == []


@pytest.mark.parametrize("name", NEEDED)
def test_needed_schema_is_present_and_a_valid_schema(name: str) -> None:
    assert name in schemas.names()
    validator = schemas._validator(name)
    type(validator).check_schema(validator.schema)


def test_validate_accepts_a_good_body_and_rejects_a_bad_one() -> None:
    good = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}],
        "model": "iir/echo",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    schemas.validate(good, "CreateEmbeddingResponse")
    bad = {**good, "data": [{"object": "embedding", "index": "0", "embedding": [0.25]}]}
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate(bad, "CreateEmbeddingResponse")


def test_nullable_fields_accept_null() -> None:
    # OpenAI's ``nullable: true`` was rewritten to JSON Schema: ``stop: null`` is a valid request.
    schemas.validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": None},
        "CreateChatCompletionRequest",
    )


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="no component schema named 'NoSuchThing'"):
        schemas.validate({}, "NoSuchThing")
