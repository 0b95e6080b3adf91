"""The local engine's surfaces besides chat: legacy completions and embeddings.

Legacy completions run the prompt as it is (no chat template), tokenized as vLLM's own
``/v1/completions`` does, through the same generation path as chat (metrics, abort on early exit,
error mapping); a list of prompts runs one prompt after the other. Embedding models run on vLLM's
pooling runner (``AsyncLLM.encode`` with ``PoolingParams`` for the ``embed`` task), one request
per input, all at once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, suppress
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from iir.backends.base import cannot_serve
from iir.core.errors import ApiError, bad_request
from iir.core.protocol import ChatRequest, ScrubbedBody, ScrubbedEmbeddings
from iir.core.types import (
    COMPLETIONS,
    EMBEDDINGS,
    TRANSLATED,
    Choice,
    Completion,
    Delta,
    Embeddings,
    NativeEvent,
    StreamEvent,
    Usage,
)

if TYPE_CHECKING:
    from iir.backends.local.vllm import LocalModel, VllmBackend

#: A model run on vLLM's pooling runner (``IIR_LOCAL_MODELS=name=path#embed``).
EMBED = "embed"
LEGACY_MAX_TOKENS = 16  # OpenAI's and vLLM's default for legacy completions
_SAMPLING = ("temperature", "top_p", "n", "stop", "seed", "presence_penalty", "frequency_penalty")


def _sampling_request(body: dict[str, Any]) -> ChatRequest:
    """The sampling fields of a legacy body in the chat request the engine's sampling reads."""
    fields: dict[str, Any] = {k: body[k] for k in _SAMPLING if body.get(k) is not None}
    logprobs = body.get("logprobs")
    if isinstance(logprobs, int):
        fields["logprobs"] = True
        fields["top_logprobs"] = logprobs
    if isinstance(body.get("logit_bias"), dict):
        fields["logit_bias"] = body["logit_bias"]
    try:
        return ChatRequest.model_validate(
            {
                "model": "local",
                "messages": [{"role": "user", "content": ""}],
                "max_tokens": body.get("max_tokens") or LEGACY_MAX_TOKENS,
                **fields,
            }
        )
    except ValidationError:
        raise bad_request("Invalid sampling fields for a local model") from None


def _legacy_logprobs(
    lm: LocalModel, c: Any, top: int, offset: int
) -> tuple[dict[str, Any] | None, int]:
    """vLLM's token logprobs in legacy completions' shape; returns the offset after them."""
    if c.logprobs is None:
        return None, offset
    tokens: list[str] = []
    values: list[float] = []
    tops: list[dict[str, float]] = []
    offsets: list[int] = []

    def text(token_id: int, lp: Any) -> str:
        tok = getattr(lp, "decoded_token", None)
        return str(tok) if tok is not None else str(lm.tokenizer.decode([token_id]))

    for tid, entry in zip(c.token_ids, c.logprobs, strict=False):
        chosen = entry.get(tid)
        token = text(tid, chosen) if chosen is not None else str(lm.tokenizer.decode([tid]))
        tokens.append(token)
        values.append(max(float(chosen.logprob), -9999.0) if chosen is not None else -9999.0)
        ranked = sorted(entry.items(), key=lambda kv: getattr(kv[1], "rank", 0) or 0)
        tops.append({text(k, v): max(float(v.logprob), -9999.0) for k, v in ranked[:top]})
        offsets.append(offset)
        offset += len(token)
    out = {
        "tokens": tokens,
        "token_logprobs": values,
        "top_logprobs": tops if top else None,
        "text_offset": offsets,
    }
    return out, offset


def _merge_logprobs(into: dict[str, Any] | None, more: dict[str, Any]) -> dict[str, Any]:
    if into is None:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in more.items()}
    for key, value in more.items():
        if isinstance(value, list) and isinstance(into.get(key), list):
            into[key].extend(value)
    return into


class LocalSurfaces:
    """Legacy completions and embeddings for :class:`~iir.backends.local.vllm.VllmBackend`."""

    def capabilities(self: VllmBackend, model: str) -> frozenset[str]:  # type: ignore[misc]
        lm = self._models.get(model)
        if lm is not None and lm.runner == EMBED:
            return frozenset({EMBEDDINGS})
        return TRANSLATED | {COMPLETIONS}

    def speaks(self: VllmBackend, surface: str, model: str) -> bool:  # type: ignore[misc]
        return surface == COMPLETIONS and COMPLETIONS in self.capabilities(model)

    async def complete_native(  # type: ignore[misc]
        self: VllmBackend, request: ScrubbedBody, model: str
    ) -> Completion:
        """The stream, gathered: one code path talks to the engine."""
        texts: dict[int, list[str]] = {}
        finish: dict[int, str] = {}
        lps: dict[int, dict[str, Any]] = {}
        usage: Usage | None = None
        async with aclosing(self.stream_native(request, model)) as events:  # type: ignore[type-var]
            async for event in events:
                if isinstance(event, Usage):
                    usage = event
                    continue
                assert isinstance(event, Delta)
                texts.setdefault(event.index, []).append(event.content or "")
                if event.finish_reason:
                    finish[event.index] = event.finish_reason
                if event.logprobs:
                    lps[event.index] = _merge_logprobs(lps.get(event.index), event.logprobs)
        choices = [
            Choice(i, "".join(texts[i]), finish.get(i, "stop"), logprobs=lps.get(i))
            for i in sorted(texts)
        ]
        return Completion(choices, usage)

    async def stream_native(  # type: ignore[misc]
        self: VllmBackend, request: ScrubbedBody, model: str
    ) -> AsyncIterator[StreamEvent | NativeEvent]:
        if request.surface != COMPLETIONS or not self.speaks(COMPLETIONS, model):
            raise cannot_serve(self.name, request.surface)
        body = request.body
        if body.get("suffix") is not None:
            raise bad_request("Local models do not support 'suffix'", param="suffix")
        lm = self._ready(model)
        prompt = body.get("prompt")
        prompts: list[str] = [prompt] if isinstance(prompt, str) else list(prompt or [])
        sampling = _sampling_request(body)
        top = sampling.top_logprobs or 0
        echo = bool(body.get("echo"))

        def tokenize() -> list[list[int]]:
            return [list(lm.tokenizer.encode(p)) for p in prompts]

        all_ids = await asyncio.to_thread(tokenize)
        params = [self._sampling(lm, sampling, len(ids)) for ids in all_ids]
        n = sampling.n
        prompt_tokens = completion_tokens = 0
        for i, (text, ids) in enumerate(zip(prompts, all_ids, strict=True)):
            prompt_tokens += len(ids)
            offsets = [len(text) if echo else 0] * n
            if echo and text:
                for c in range(n):
                    yield Delta(index=i * n + c, content=text)
            async with aclosing(self._generate(lm, ids, params[i])) as outputs:  # type: ignore[type-var]
                async for out in outputs:
                    for c in out.outputs:
                        completion_tokens += len(c.token_ids)
                        if not c.text and not c.finish_reason:
                            continue
                        lp = None
                        if sampling.logprobs:
                            lp, offsets[c.index] = _legacy_logprobs(lm, c, top, offsets[c.index])
                        yield Delta(
                            index=i * n + c.index,
                            content=c.text,
                            finish_reason=self._finish(c.finish_reason),
                            logprobs=lp,
                        )
        yield Usage(prompt_tokens, completion_tokens)

    async def embed(  # type: ignore[misc]
        self: VllmBackend, request: ScrubbedEmbeddings, model: str
    ) -> Embeddings:
        if EMBEDDINGS not in self.capabilities(model):
            raise cannot_serve(self.name, EMBEDDINGS)
        lm = self._ready(model)
        inputs = request.inputs

        def tokenize() -> list[list[int]]:
            return [
                list(lm.tokenizer.encode(item)) if isinstance(item, str) else list(item)
                for item in inputs
            ]

        all_ids = await asyncio.to_thread(tokenize)
        ctx = lm.context_length
        for i, ids in enumerate(all_ids):
            if ctx is not None and len(ids) > ctx:
                raise bad_request(
                    f"This model's maximum context length is {ctx} tokens; input {i} has "
                    f"{len(ids)} tokens",
                    param="input",
                    code="context_length_exceeded",
                )
        fields = {"dimensions": request.dimensions} if request.dimensions else {}
        assert self.factory is not None
        try:
            params = [self.factory.pooling_params(lm.engine, **fields) for _ in all_ids]
        except (ValueError, TypeError) as exc:
            raise bad_request(f"vLLM rejected the request: {exc}", param="dimensions") from None
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._pool(lm, ids, p))
                for ids, p in zip(all_ids, params, strict=True)
            ]
        vectors = [t.result() for t in tasks]
        return Embeddings(vectors, Usage(sum(len(ids) for ids in all_ids), 0))

    async def _pool(  # type: ignore[misc]
        self: VllmBackend, lm: LocalModel, ids: list[int], params: Any
    ) -> list[float]:
        """One input through the pooling runner; aborted if the caller goes away."""
        engine = lm.engine
        rid = f"iir-{uuid.uuid4().hex}"
        self._inflight[lm.name] = self._inflight.get(lm.name, 0) + 1
        last: Any = None
        gen = engine.encode({"prompt_token_ids": ids}, params, rid)
        try:
            async for out in gen:
                last = out
        except (asyncio.CancelledError, GeneratorExit, ApiError):
            raise
        except Exception as exc:
            from iir.backends.local.vllm import _error_text, _errored

            text = _error_text(exc)
            if isinstance(exc, ValueError) or "Validation" in type(exc).__name__:
                raise bad_request(f"vLLM rejected the request: {text}", param="input") from None
            if _errored(engine) or type(exc).__name__ == "EngineDeadError":
                self._mark_dead(lm, text)
            raise ApiError(502, f"vLLM backend error: {text}", code="upstream_error") from None
        finally:
            self._inflight[lm.name] -= 1
            with suppress(Exception):
                await gen.aclose()
            if last is None or not last.finished:
                with suppress(Exception):
                    await engine.abort(rid)
        if last is None:
            raise ApiError(502, "vLLM backend error: the engine returned no embedding")
        data = last.outputs.data
        values = data.tolist() if hasattr(data, "tolist") else list(data)
        return [float(x) for x in values]
