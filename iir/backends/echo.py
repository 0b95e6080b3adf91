"""``iir/echo``: a deterministic built-in model.

It answers with the last user message's text, so the whole request path (limits, streaming, stop
sequences, usage) can be exercised and benchmarked without a GPU or a network. An optional
per-token delay makes it behave like a model of known speed. On legacy completions it answers
with the prompt itself (a model certain of every token: each log probability is 0); a
``suffix`` changes nothing (the prompt is the whole answer, and nothing comes after it).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from iir.backends.base import Backend
from iir.core.errors import answer_too_large
from iir.core.protocol import ChatRequest, ScrubbedBody, ScrubbedChat
from iir.core.types import (
    COMPLETIONS,
    TRANSLATED,
    Choice,
    Completion,
    Delta,
    ModelCard,
    StreamEvent,
    Usage,
)

MODEL = "iir/echo"
_CAPABILITIES = TRANSLATED | {COMPLETIONS}

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
    return _cut(text, request.stop_list, request.output_limit)


# Legacy completions' default output budget (OpenAI's and vLLM's).
LEGACY_MAX_TOKENS = 16


def _cut(text: str, stops: list[str], limit: int | None) -> tuple[list[str], str]:
    finish = "stop"
    stops = [s for s in stops if s]
    if stops:
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            text = text[:cut]
    out = pieces(text)
    if limit is not None and len(out) > limit:
        out = out[:limit]
        finish = "length"
    return out, finish


def legacy_logprobs(tokens: list[str], offset: int, top: bool) -> dict[str, Any]:
    """Legacy completions' logprobs for ``tokens`` starting at character ``offset``."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [0.0] * len(tokens),
        "top_logprobs": [{t: 0.0} for t in tokens] if top else None,
        "text_offset": offsets,
    }


class _Legacy:
    """One legacy completions request, as echo answers it: every prompt ``n`` times."""

    def __init__(self, body: dict[str, Any]) -> None:
        prompt = body.get("prompt")
        self.prompts: list[str] = [prompt] if isinstance(prompt, str) else list(prompt or [])
        self.n = int(body.get("n") or 1)
        self.echo = bool(body.get("echo"))
        logprobs = body.get("logprobs")
        self.logprobs = logprobs if isinstance(logprobs, int) else None
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        limit = body.get("max_tokens")
        limit = LEGACY_MAX_TOKENS if limit is None else int(limit)
        self.answers = [_cut(p, stops, limit) for p in self.prompts]

    def usage(self) -> Usage:
        prompt = sum(len(pieces(p)) for p in self.prompts)
        return Usage(prompt, sum(len(out) for out, _ in self.answers) * self.n)

    def choices(self) -> list[Choice]:
        out = []
        for i, (prompt, (toks, finish)) in enumerate(zip(self.prompts, self.answers, strict=True)):
            head = prompt if self.echo else ""
            lps = None
            if self.logprobs is not None:
                shown = (pieces(prompt) if self.echo else []) + toks
                lps = legacy_logprobs(shown, 0, self.logprobs > 0)
            for j in range(self.n):
                out.append(Choice(i * self.n + j, head + "".join(toks), finish, logprobs=lps))
        return out


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

    def resolve(self, name: str) -> str | None:
        # Asked for every request (routing, then the run): one name, no model list to build.
        return MODEL if name == MODEL else None

    def capabilities(self, model: str) -> frozenset[str]:
        return _CAPABILITIES

    def speaks(self, surface: str, model: str) -> bool:
        return surface == COMPLETIONS

    async def complete_native(self, request: ScrubbedBody, model: str) -> Completion:
        legacy = _Legacy(request.body)
        usage = legacy.usage()
        if self.delay and usage.completion_tokens:
            await asyncio.sleep(self.delay * usage.completion_tokens / legacy.n)
        return Completion(legacy.choices(), usage)

    async def stream_native(self, request: ScrubbedBody, model: str) -> AsyncIterator[StreamEvent]:
        legacy = _Legacy(request.body)
        top = legacy.logprobs is not None and legacy.logprobs > 0
        sent = 0
        try:
            for i, (prompt, (toks, finish)) in enumerate(
                zip(legacy.prompts, legacy.answers, strict=True)
            ):
                for j in range(legacy.n):
                    index, offset = i * legacy.n + j, 0
                    if legacy.echo and prompt:
                        lps = None
                        if legacy.logprobs is not None:
                            lps = legacy_logprobs(pieces(prompt), 0, top)
                        yield Delta(index=index, content=prompt, logprobs=lps)
                        offset = len(prompt)
                    for k, piece in enumerate(toks):
                        if self.delay:
                            await asyncio.sleep(self.delay)
                        lps = None
                        if legacy.logprobs is not None:
                            lps = legacy_logprobs([piece], offset, top)
                        offset += len(piece)
                        last = k == len(toks) - 1
                        yield Delta(
                            index=index,
                            content=piece,
                            finish_reason=finish if last else None,
                            logprobs=lps,
                        )
                        sent += 1
                    if not toks:
                        yield Delta(index=index, content="", finish_reason=finish)
            yield legacy.usage()
        except (asyncio.CancelledError, GeneratorExit):
            log.info(
                "generation cancelled",
                extra={"event": "cancelled", "tokens": sent, "backend": self.name},
            )
            raise

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
