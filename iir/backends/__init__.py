"""Where a chat request runs: the built-in echo model, the local vLLM engine, remote providers.

Each backend lives in its own module behind the small interface in :mod:`iir.backends.base`.
"""

from .base import Backend, Choice, Completion, Delta, ModelCard, StreamEvent, Usage

__all__ = ["Backend", "Choice", "Completion", "Delta", "ModelCard", "StreamEvent", "Usage"]
