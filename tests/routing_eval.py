"""Runs the labelled routing cases (tests/data/routing_cases.jsonl) through the real router.

Shared by tests/test_routing.py and bench/bench_routing.py. The three remote models of the test
policy are served by :class:`FakeRemote`, a stand-in for remote providers that never runs a
request: routing only needs to know that they exist and what their circuit state is.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iir.backends.base import Backend
from iir.backends.echo import EchoBackend
from iir.backends.registry import ModelRegistry
from iir.core.errors import ApiError
from iir.core.protocol import ChatRequest, parse_chat_request
from iir.core.settings import STRATEGIES
from iir.core.types import Completion, Load, ModelCard, StreamEvent
from iir.policy.routing.classifier import CATEGORIES
from iir.policy.routing.router import Router
from iir.policy.routing.rules import load_policy

DATA = Path(__file__).parent / "data"
CASES = DATA / "routing_cases.jsonl"
POLICY = DATA / "routing_policy.toml"
# Prompts written after the classifier's cues were last tuned, and never tuned against: the
# honest estimate of how it does on prompts it has not seen.
HOLDOUT = DATA / "routing_holdout.jsonl"
REMOTE_MODELS = ("cheap/mini", "big/pro", "code/coder")
TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


class FakeRemote(Backend):
    """Remote models that exist for routing; their circuits can be opened by a test."""

    name = "fake-remote"

    def __init__(self, models: tuple[str, ...] = REMOTE_MODELS) -> None:
        self.ids = models
        self.circuits: dict[str, str] = {}

    def models(self) -> list[ModelCard]:
        return [ModelCard(id=m, owned_by="fake") for m in self.ids]

    def load(self, model: str) -> Load:
        return Load(circuit=self.circuits.get(model, "closed"))

    async def complete(self, request: ChatRequest, model: str) -> Completion:
        raise ApiError(502, "the fake remote does not run requests")

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        raise ApiError(502, "the fake remote does not run requests")
        yield  # pragma: no cover


class LocalEcho(EchoBackend):
    """``iir/echo`` playing the box's local GPU model (as the test policy says)."""

    local = True


def load_cases(path: Path = CASES) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def chat_body(case: dict[str, Any]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [
        {"role": role, "content": text} for role, text in case.get("history", [])
    ]
    content: Any = case["prompt"]
    if case.get("image"):
        content = [{"type": "text", "text": case["prompt"]}, IMAGE]
    messages.append({"role": "user", "content": content})
    body: dict[str, Any] = {"model": "auto", "messages": messages}
    if case.get("tools"):
        body["tools"] = [TOOL]
    if case.get("json"):
        body["response_format"] = {"type": "json_object"}
    return body


def make_router(strategy: str = "local-first") -> tuple[Router, FakeRemote]:
    remote = FakeRemote()
    registry = ModelRegistry([LocalEcho(), remote])
    return Router(load_policy(POLICY), registry, strategy), remote


@dataclass
class Evaluation:
    total: int = 0
    correct: int = 0
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    agree: dict[str, int] = field(default_factory=dict)
    misses: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    def agreement(self, strategy: str | None = None) -> float:
        if strategy is not None:
            return self.agree[strategy] / self.total
        return sum(self.agree.values()) / (self.total * len(self.agree))

    def report(self) -> str:
        short = {c: c[:5] for c in CATEGORIES}
        lines = [
            f"routing evaluation: {self.total} cases, category accuracy {self.accuracy:.1%}, "
            f"decision agreement {self.agreement():.1%} ("
            + ", ".join(f"{s} {self.agreement(s):.1%}" for s in STRATEGIES)
            + ")",
            "confusion matrix (rows: expected, columns: decided)",
            f"{'':>14}" + "".join(f"{short[c]:>7}" for c in CATEGORIES),
        ]
        for exp in CATEGORIES:
            row = self.confusion.get(exp, {})
            lines.append(f"{exp:>14}" + "".join(f"{row.get(c, 0):>7}" for c in CATEGORIES))
        if self.misses:
            lines.append("misclassified:")
            lines.extend(f"  {m}" for m in self.misses)
        return "\n".join(lines)


def evaluate() -> Evaluation:
    ev = Evaluation(agree=dict.fromkeys(STRATEGIES, 0))
    router, _ = make_router()
    for case in load_cases():
        chat = parse_chat_request(chat_body(case))
        ev.total += 1
        decided: str | None = None
        for strategy in STRATEGIES:
            try:
                d = router.decide(chat, strategy)
                target, decided = d.model, d.category.name
            except ApiError:
                target = None
            if target == case["expect"][strategy]:
                ev.agree[strategy] += 1
        if decided is None:  # every strategy refused: classify through the decision path anyway
            decided = router.decide(chat, "quality").category.name
        exp = case["category"]
        ev.confusion.setdefault(exp, {}).setdefault(decided, 0)
        ev.confusion[exp][decided] += 1
        if decided == exp:
            ev.correct += 1
        else:
            text = case["prompt"][:70].replace("\n", " ")
            ev.misses.append(f"#{case['id']} [{case['lang']}] {exp} -> {decided}: {text}")
    return ev


def evaluate_holdout() -> tuple[float, list[str]]:
    router, _ = make_router("quality")
    cases = load_cases(HOLDOUT)
    misses = []
    for case in cases:
        decided = router.decide(parse_chat_request(chat_body(case))).category.name
        if decided != case["category"]:
            misses.append(f"#{case['id']} [{case['lang']}] {case['category']} -> {decided}")
    return 1 - len(misses) / len(cases), misses


if __name__ == "__main__":
    print(evaluate().report())
    acc, misses = evaluate_holdout()
    print(f"held-out accuracy {acc:.1%}", *misses, sep="\n  ")
