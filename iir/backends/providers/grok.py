"""``grok/<model>``: xAI's Grok models through their OpenAI-compatible API."""

from __future__ import annotations

from iir.backends.providers.compat import OpenAICompatBackend


class GrokBackend(OpenAICompatBackend):
    name = "grok"
    key_vars = ("XAI_API_KEY", "GROK_API_KEY")
    base_var = "IIR_GROK_BASE_URL"
    default_base_url = "https://api.x.ai/v1"
    catalogue = ("grok-4", "grok-3", "grok-3-mini")
