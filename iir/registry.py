"""Which backend serves which model name."""

from __future__ import annotations

from .backends.base import Backend, ModelCard
from .errors import not_found


class ModelRegistry:
    def __init__(self, backends: list[Backend]) -> None:
        self.backends = list(backends)

    def resolve(self, name: str) -> tuple[Backend, str]:
        for backend in self.backends:
            target = backend.resolve(name)
            if target is not None:
                return backend, target
        raise not_found(
            f"The model '{name}' does not exist or is not available; see GET /v1/models",
            code="model_not_found",
            param="model",
        )

    def cards(self) -> list[ModelCard]:
        seen: dict[str, ModelCard] = {}
        for backend in self.backends:
            for card in backend.models():
                seen.setdefault(card.id, card)
        return list(seen.values())
