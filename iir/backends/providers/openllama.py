"""``openllama/<model>``: any OpenAI-compatible server on the LAN (llama.cpp, Ollama, vLLM).

It has no public endpoint, so the base URL is what configures it; a key is sent only when set.
Its models are whatever the server lists at ``GET {base}/models``.
"""

from __future__ import annotations

from iir.backends.providers.compat import OpenAICompatBackend


class OpenLlamaBackend(OpenAICompatBackend):
    name = "openllama"
    key_vars = ("OPENLLAMA_API_KEY",)
    key_required = False
    base_var = "IIR_OPENLLAMA_BASE_URL"
    default_base_url = None
    catalogue = ()
