"""The design rules the import contract cannot state, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import iir
from iir.api.jobs.protocol import Status
from iir.store.jobs import STATUSES

PACKAGE = Path(iir.__file__).parent
PIPELINE = PACKAGE / "service" / "pipeline.py"


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


#: Every type a backend accepts; each is built only in the pipeline, right after the scrub step.
SCRUBBED = ("ScrubbedChat", "ScrubbedBody", "ScrubbedEmbeddings")
#: Every backend entry point that takes a request, and the scrubbed type it must take.
ENTRY_POINTS = {
    "complete": "ScrubbedChat",
    "stream": "ScrubbedChat",
    "complete_native": "ScrubbedBody",
    "stream_native": "ScrubbedBody",
    "embed": "ScrubbedEmbeddings",
}


def _builders(name: str) -> list[tuple[Path, int]]:
    """Where ``name`` is called or validated into (``name(...)``, ``name.model_validate(...)``,
    ``name.model_construct(...)``), or subclassed."""
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                fn = node.func
                if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name):
                    if fn.value.id == name:
                        found.append((path, node.lineno))
                elif isinstance(fn, ast.Name) and fn.id == name:
                    found.append((path, node.lineno))
            elif isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id == name for b in node.bases
            ):
                found.append((path, node.lineno))
    return found


@pytest.mark.parametrize("name", SCRUBBED)
def test_only_the_pipeline_builds_a_scrubbed_request(name: str) -> None:
    """A backend accepts only scrubbed requests; building one anywhere but right after the scrub
    step would let unscrubbed text reach a provider."""
    builders = _builders(name)
    assert builders, f"the pipeline must build {name} somewhere"
    assert {p for p, _ in builders} == {PIPELINE}, builders


def test_backends_take_only_a_scrubbed_request() -> None:
    seen = set()
    for path in sorted((PACKAGE / "backends").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
                wanted = ENTRY_POINTS.get(node.name)
                if wanted is None:
                    continue
                seen.add(node.name)
                request = node.args.args[1].annotation
                assert isinstance(request, ast.Name) and request.id == wanted, (
                    f"{path}:{node.lineno}: {node.name} must take {wanted}"
                )
    assert seen == set(ENTRY_POINTS)


def test_job_statuses_are_declared_once() -> None:
    assert Status.__args__ == STATUSES  # type: ignore[attr-defined]
