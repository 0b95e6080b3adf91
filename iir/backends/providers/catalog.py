"""The remote providers, built from the settings (unconfigured ones answer 404 naming what is missing)."""

from __future__ import annotations

from iir.backends.providers.anthropic import AnthropicBackend
from iir.backends.providers.base import ProviderBackend
from iir.backends.providers.grok import GrokBackend
from iir.backends.providers.openai import OpenAIBackend
from iir.backends.providers.openllama import OpenLlamaBackend
from iir.backends.providers.openrouter import OpenRouterBackend
from iir.core.settings import Settings

PROVIDERS: tuple[type[ProviderBackend], ...] = (
    OpenAIBackend,
    AnthropicBackend,
    GrokBackend,
    OpenRouterBackend,
    OpenLlamaBackend,
)


def remote_backends(settings: Settings) -> list[ProviderBackend]:
    return [cls(settings.env, settings.upstream) for cls in PROVIDERS]
