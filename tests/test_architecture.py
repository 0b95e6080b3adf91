"""The design rules the import contract cannot state, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

import iir
from iir.api.jobs.protocol import Status
from iir.store.jobs import STATUSES

PACKAGE = Path(iir.__file__).parent
PIPELINE = PACKAGE / "service" / "pipeline.py"


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_only_the_pipeline_builds_a_scrubbed_request() -> None:
    """A backend accepts only ``ScrubbedChat``; building one anywhere but right after the scrub
    step would let unscrubbed text reach a provider."""
    builders = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                fn = node.func
                if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name):
                    if fn.value.id == "ScrubbedChat":
                        builders.append((path, node.lineno))
                elif isinstance(fn, ast.Name) and fn.id == "ScrubbedChat":
                    builders.append((path, node.lineno))
    assert builders, "the pipeline must build the scrubbed request somewhere"
    assert {p for p, _ in builders} == {PIPELINE}, builders


def test_backends_take_only_a_scrubbed_request() -> None:
    for path in sorted((PACKAGE / "backends").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef) and node.name in (
                "complete",
                "stream",
            ):
                request = node.args.args[1].annotation
                assert isinstance(request, ast.Name) and request.id == "ScrubbedChat", (
                    f"{path}:{node.lineno}"
                )


def test_job_statuses_are_declared_once() -> None:
    assert Status.__args__ == STATUSES  # type: ignore[attr-defined]
