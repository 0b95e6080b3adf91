"""``openai/<model>``: OpenAI's chat completions."""

from __future__ import annotations

from iir.backends.providers.compat import OpenAICompatBackend


class OpenAIBackend(OpenAICompatBackend):
    name = "openai"
    key_vars = ("OPENAI_API_KEY",)
    base_var = "IIR_OPENAI_BASE_URL"
    default_base_url = "https://api.openai.com/v1"
    catalogue = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o4-mini")
