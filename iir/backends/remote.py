"""The remote providers, built from the settings (unconfigured ones answer 404 naming what is missing)."""

from __future__ import annotations

from ..config import Settings
from .anthropic import AnthropicBackend
from .grok import GrokBackend
from .openai import OpenAIBackend
from .openai_compat import ProviderBackend
from .openllama import OpenLlamaBackend
from .openrouter import OpenRouterBackend

PROVIDERS: tuple[type[ProviderBackend], ...] = (
    OpenAIBackend,
    AnthropicBackend,
    GrokBackend,
    OpenRouterBackend,
    OpenLlamaBackend,
)


def remote_backends(settings: Settings) -> list[ProviderBackend]:
    return [cls(settings.env, settings.upstream) for cls in PROVIDERS]
