"""``openrouter/<vendor>/<model>``: OpenRouter's OpenAI-compatible API (its ids hold a slash)."""

from __future__ import annotations

from iir.backends.providers.compat import OpenAICompatBackend


class OpenRouterBackend(OpenAICompatBackend):
    name = "openrouter"
    key_vars = ("OPENROUTER_API_KEY",)
    base_var = "IIR_OPENROUTER_BASE_URL"
    default_base_url = "https://openrouter.ai/api/v1"
    catalogue = (
        "openai/gpt-4o",
        "anthropic/claude-sonnet-4.5",
        "meta-llama/llama-3.3-70b-instruct",
        "mistralai/mistral-large",
    )
