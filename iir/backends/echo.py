"""``iir/echo``: a deterministic built-in model.

It answers with the last user message's text, so the whole request path (limits, streaming, stop
sequences, usage) can be exercised and benchmarked without a GPU or a network. An optional
per-token delay makes it behave like a model of known speed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator

from iir.backends.base import Backend
from iir.core.errors import answer_too_large
from iir.core.protocol import ChatRequest, ScrubbedChat
from iir.core.types import Choice, Completion, Delta, ModelCard, StreamEvent, Usage

MODEL = "iir/echo"

# Echo's own tokenizer: a word of up to six characters or one symbol, with the whitespace before it,
# or the whitespace at the very end. Joining the pieces gives the text back exactly.
# The quantifiers on whitespace are possessive: a run of whitespace is read once, never given back
# character by character, so a long run (with nothing after it) costs linear time, not quadratic.
_PIECE = re.compile(r"\s*+(?:\w{1,6}|[^\w\s])|\s++\Z")
# OpenAI-style framing cost per message and for priming the reply.
_PER_MESSAGE = 3
_REPLY_PRIMING = 3

log = logging.getLogger("iir.echo")


def pieces(text: str) -> list[str]:
    out: list[str] = _PIECE.findall(text)
    return out


def prompt_tokens(request: ChatRequest) -> int:
    total = _REPLY_PRIMING
    for m in request.messages:
        total += _PER_MESSAGE + len(pieces(m.text())) + (1 if m.name else 0)
    return total


def _answer(request: ChatRequest) -> tuple[list[str], str]:
    """The pieces to emit and the finish reason, after ``stop`` and ``max_tokens``."""
    text = next((m.text() for m in reversed(request.messages) if m.role == "user"), "")
    finish = "stop"
    stops = [s for s in request.stop_list if s]
    if stops:
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            text = text[:cut]
    out = pieces(text)
    limit = request.output_limit
    if limit is not None and len(out) > limit:
        out = out[:limit]
        finish = "length"
    return out, finish


class EchoBackend(Backend):
    name = "echo"

    def __init__(self, token_delay_ms: float = 0.0, max_answer_bytes: int = 0) -> None:
        self.delay = token_delay_ms / 1000.0
        self.max_answer_bytes = max_answer_bytes

    def _check_size(self, out: list[str], n: int) -> None:
        """Refuses up front an answer over the cap: echo's answer is ``n`` copies of the input,
        so a large text with a large ``n`` would otherwise be built (and sent) in full."""
        if not self.max_answer_bytes:
            return
        size = n * len("".join(out).encode("utf-8", "surrogatepass"))
        if size > self.max_answer_bytes:
            raise answer_too_large(size, self.max_answer_bytes, n)

    def models(self) -> list[ModelCard]:
        return [ModelCard(id=MODEL, owned_by="iir", created=1_700_000_000)]

    async def complete(self, request: ScrubbedChat, model: str) -> Completion:
        out, finish = _answer(request)
        self._check_size(out, request.n)
        if self.delay and out:
            await asyncio.sleep(self.delay * len(out))
        text = "".join(out)
        choices = [Choice(index=i, content=text, finish_reason=finish) for i in range(request.n)]
        return Completion(
            choices=choices, usage=Usage(prompt_tokens(request), len(out) * request.n)
        )

    async def stream(self, request: ScrubbedChat, model: str) -> AsyncIterator[StreamEvent]:
        out, finish = _answer(request)
        self._check_size(out, request.n)
        sent = 0
        try:
            for i, piece in enumerate(out):
                if self.delay:
                    await asyncio.sleep(self.delay)
                last = i == len(out) - 1
                for c in range(request.n):
                    yield Delta(index=c, content=piece, finish_reason=finish if last else None)
                sent += 1
            if not out:
                for c in range(request.n):
                    yield Delta(index=c, content="", finish_reason=finish)
            yield Usage(prompt_tokens(request), len(out) * request.n)
        except (asyncio.CancelledError, GeneratorExit):
            log.info(
                "generation cancelled",
                extra={"event": "cancelled", "tokens": sent, "backend": self.name},
            )
            raise
