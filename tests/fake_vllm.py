"""A stand-in for vLLM's ``AsyncLLM`` (a third-party engine), for machines without vLLM or a GPU.

It has exactly ``AsyncLLM``'s ``generate()``/``encode()``/``abort()`` signatures (the vLLM that
``make test-engine`` installs; tests/engine/test_stand_in.py compares them) and yields objects
shaped like ``vllm.outputs.RequestOutput``/``CompletionOutput`` with ``RequestOutputKind.DELTA``
semantics: each output carries only the new text and token ids of the choices that moved, and the
last one has ``finished=True``. Its "model" answers with the last user message, one word per token
(a raw prompt without chat markers: the whole prompt). An engine built with ``runner="pooling"``
embeds instead (``encode()`` yields one ``PoolingRequestOutput`` whose vector is derived from the
token ids) and refuses to generate, as vLLM does.

Loaded into a real ``iir serve`` with ``IIR_VLLM_ENGINE_FACTORY=tests.fake_vllm:factory``. Control
words in the last user message drive failures: ``__fail__`` (a generate error), ``__fail_mid__``
(an error after two tokens), ``__die__`` (the engine dies), ``__slow__`` (a long, slow answer).
Environment knobs: ``FAKE_VLLM_CREATE_GATE`` / ``FAKE_VLLM_REFRESH_GATE`` (a file path: building
an engine / checking availability waits while it exists), ``FAKE_VLLM_FAIL_CREATE`` (served name
whose engine cannot be built), ``FAKE_VLLM_UNAVAILABLE`` (a reason no engine can be built).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import re
import threading
import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("tests.fake_vllm")

_WORD = re.compile(r"\s*\S+|\s+$")


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


class SamplingParams:
    """vLLM's constructor fields that IIR uses, validated the way vLLM does."""

    def __init__(
        self,
        n: int = 1,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        max_tokens: int | None = 16,
        logprobs: int | None = None,
        logit_bias: dict[int, float] | None = None,
        output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE,
    ) -> None:
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}.")
        if temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {temperature}.")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}.")
        self.n = n
        self.presence_penalty = presence_penalty
        self.frequency_penalty = frequency_penalty
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.stop = [stop] if isinstance(stop, str) else list(stop or [])
        self.max_tokens = max_tokens
        self.logprobs = logprobs
        self.logit_bias = logit_bias
        self.output_kind = output_kind


class PoolingParams:
    """vLLM's pooling parameters that IIR uses, checked the way ``verify("embed")`` checks them."""

    def __init__(self, dimensions: int | None = None, normalize: bool | None = None) -> None:
        self.dimensions = dimensions
        self.normalize = normalize
        self.task: str | None = None

    def verify(self, task: str, model_config: Any = None) -> None:
        self.task = task
        if self.dimensions is not None and not getattr(model_config, "is_matryoshka", False):
            raise ValueError(
                f'Model "{getattr(model_config, "served_model_name", "?")}" does not support '
                "matryoshka representation, changing output dimensions will lead to poor results."
            )


@dataclass
class PoolingOutput:
    data: list[float]


@dataclass
class PoolingRequestOutput:
    request_id: str
    outputs: PoolingOutput
    prompt_token_ids: list[int]
    num_cached_tokens: int
    finished: bool


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    routed_experts: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    lora_request: Any = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool
    metrics: Any = None
    lora_request: Any = None
    encoder_prompt: str | None = None
    encoder_prompt_token_ids: list[int] | None = None
    num_cached_tokens: int | None = None
    num_cache_creation_tokens: int | None = None


class EngineDeadError(Exception):
    pass


class EngineGenerateError(Exception):
    pass


class TemplateError(Exception):
    pass


class Tokenizer:
    """One token per word (with its leading space); ids are handed out as words are first seen."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._words: dict[int, str] = {}
        self._lock = threading.Lock()

    def _id(self, word: str) -> int:
        with self._lock:
            if word not in self._ids:
                tid = len(self._ids) + 100
                self._ids[word] = tid
                self._words[tid] = word
            return self._ids[word]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self._id(w) for w in _WORD.findall(text)]
        return [1, *ids] if add_special_tokens else ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return "".join(self._words.get(i, "") for i in ids)

    def apply_chat_template(
        self,
        conversation: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        **kwargs: Any,
    ) -> str | list[int]:
        parts = []
        for i, m in enumerate(conversation):
            if m["role"] == "system" and i != 0:
                raise TemplateError("System message must be at the beginning.")
            parts.append(f"<|{m['role']}|> {m.get('content') or ''}")
        if tools:
            parts.insert(0, f"<|tools|> {len(tools)}")
        if add_generation_prompt:
            parts.append("<|assistant|>")
        text = " ".join(parts)
        return self.encode(text, add_special_tokens=False) if tokenize else text


@dataclass
class ModelConfig:
    max_model_len: int
    served_model_name: str = ""
    is_matryoshka: bool = False


def _wait_gate(var: str) -> None:
    gate = os.environ.get(var)
    while gate and Path(gate).exists():
        time.sleep(0.02)


class FakeAsyncLLM:
    def __init__(self, served_name: str, max_model_len: int, runner: str = "generate") -> None:
        self.served_name = served_name
        self.runner = runner
        self.model_config = ModelConfig(max_model_len, served_name)
        self.tokenizer = Tokenizer()
        self.aborted: list[str] = []
        self._dead = False
        self._running: set[str] = set()

    @property
    def errored(self) -> bool:
        return self._dead

    def get_tokenizer(self) -> Tokenizer:
        return self.tokenizer

    def shutdown(self, timeout: float | None = None) -> None:
        self._dead = True

    def get_num_unfinished_requests(self) -> int:
        return len(self._running)

    async def generate(
        self,
        prompt: Any,
        sampling_params: SamplingParams,
        request_id: str,
        *,
        prompt_text: str | None = None,
        lora_request: Any = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        trace_headers: Mapping[str, str] | None = None,
        priority: int = 0,
        data_parallel_rank: int | None = None,
        session_id: str | None = None,
        kv_hints: Any = None,
        reasoning_ended: bool | None = None,
        reasoning_parser_kwargs: dict[str, Any] | None = None,
    ) -> AsyncGenerator[RequestOutput, None]:
        if self._dead:
            raise EngineDeadError(
                "EngineCore encountered an issue. See stack trace for the root cause."
            )
        if self.runner == "pooling":
            raise ValueError("This model does not support the 'generate' task")
        if sampling_params.output_kind is not RequestOutputKind.DELTA:
            raise EngineGenerateError("this stand-in only streams DELTA outputs")
        if sampling_params.max_tokens is None:
            raise EngineGenerateError("max_tokens must be set")
        ids = (
            list(prompt["prompt_token_ids"])
            if isinstance(prompt, dict)
            else self.tokenizer.encode(prompt)
        )
        text = self.tokenizer.decode(ids)
        # The "answer": the last user turn of the rendered prompt (a raw prompt: all of it).
        last_user = text.rsplit("<|user|>", 1)[-1].split("<|", 1)[0].strip()
        words = _WORD.findall(" " + last_user) if last_user else []
        delay = 0.0
        if "__slow__" in last_user:
            words, delay = [" tick"] * 100_000, 0.01
        self._running.add(request_id)
        log.info("fake generate", extra={"event": "fake_generate", "reason": request_id})
        try:
            if "__die__" in last_user:
                self._dead = True
                raise EngineDeadError(
                    "EngineCore encountered an issue. See stack trace for the root cause."
                )
            if "__fail__" in last_user:
                raise EngineGenerateError() from RuntimeError(
                    "CUDA error: an illegal memory access"
                )
            sp = sampling_params
            plans = [self._plan(words, sp) for _ in range(sp.n)]
            step = 0
            while True:
                outs = []
                for i, (toks, finish, stop_reason) in enumerate(plans):
                    if step >= len(toks):
                        continue
                    last = step == len(toks) - 1
                    tid = self.tokenizer.encode(toks[step], add_special_tokens=False)[0]
                    lps = None
                    if sp.logprobs is not None:
                        alt = self.tokenizer.encode(" maybe", add_special_tokens=False)[0]
                        entry = {tid: Logprob(-0.25, 1, toks[step])}
                        if sp.logprobs >= 1 and alt != tid:
                            entry[alt] = Logprob(-1.5, 2, " maybe")
                        lps = [entry]
                    outs.append(
                        CompletionOutput(
                            index=i,
                            text=toks[step],
                            token_ids=[tid],
                            cumulative_logprob=None,
                            logprobs=lps,
                            finish_reason=finish if last else None,
                            stop_reason=stop_reason if last else None,
                        )
                    )
                if "__fail_mid__" in last_user and step == 2:
                    raise EngineGenerateError() from RuntimeError("CUDA error: device-side assert")
                done = all(step >= len(t) - 1 for t, _, _ in plans)
                if not plans or all(not t for t, _, _ in plans):
                    outs = [
                        CompletionOutput(i, "", [], None, None, finish_reason="stop")
                        for i in range(sp.n)
                    ]
                    done = True
                yield RequestOutput(request_id, None, ids if step == 0 else [], None, outs, done)
                if done:
                    break
                step += 1
                await asyncio.sleep(delay)
        except (asyncio.CancelledError, GeneratorExit):
            # What AsyncLLM does when its consumer goes away.
            await self.abort(request_id, internal=True)
            raise
        finally:
            self._running.discard(request_id)

    async def encode(
        self,
        prompt: Any,
        pooling_params: PoolingParams,
        request_id: str,
        lora_request: Any = None,
        trace_headers: Mapping[str, str] | None = None,
        priority: int = 0,
        tokenization_kwargs: dict[str, Any] | None = None,
        reasoning_ended: bool | None = None,
    ) -> AsyncGenerator[PoolingRequestOutput, None]:
        if self._dead:
            raise EngineDeadError("EngineCore encountered an issue.")
        if self.runner != "pooling":
            raise ValueError("This model does not support the 'embed' task")
        if pooling_params.task != "embed":
            raise ValueError("`task` must be set")
        ids = list(prompt["prompt_token_ids"])
        dims = pooling_params.dimensions or 8
        raw = [float((sum(ids) * (i + 3) + len(ids)) % 11 - 5) for i in range(dims)]
        norm = sum(x * x for x in raw) ** 0.5 or 1.0
        await asyncio.sleep(0)
        yield PoolingRequestOutput(request_id, PoolingOutput([x / norm for x in raw]), ids, 0, True)

    @staticmethod
    def _plan(words: list[str], sp: SamplingParams) -> tuple[list[str], str, str | None]:
        text = "".join(words)
        for s in sp.stop:
            cut = text.find(s)
            if cut >= 0:
                kept = _WORD.findall(text[:cut].rstrip())
                if sp.max_tokens is not None and len(kept) > sp.max_tokens:
                    return kept[: sp.max_tokens], "length", None
                return kept, "stop", s
        if sp.max_tokens is not None and len(words) > sp.max_tokens:
            return words[: sp.max_tokens], "length", None
        return words, "stop", None

    async def abort(self, request_id: str | Iterable[str], internal: bool = False) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            if rid in self._running or not internal:
                self.aborted.append(rid)
                log.info("fake abort", extra={"event": "fake_abort", "reason": rid})


@dataclass
class FakeFactory:
    """The engine factory IIR loads through ``IIR_VLLM_ENGINE_FACTORY`` (tests only)."""

    engines: list[FakeAsyncLLM] = field(default_factory=list)
    SamplingParams: type = SamplingParams
    RequestOutputKind: type = RequestOutputKind

    def unavailable_reason(self) -> str | None:
        _wait_gate("FAKE_VLLM_REFRESH_GATE")
        return os.environ.get("FAKE_VLLM_UNAVAILABLE") or None

    def create(self, spec: Any) -> FakeAsyncLLM:
        _wait_gate("FAKE_VLLM_CREATE_GATE")
        log.info(
            "fake create",
            extra={
                "event": "fake_create",
                "model": spec.served_name,
                "reason": repr(spec.engine_args),
            },
        )
        if os.environ.get("FAKE_VLLM_FAIL_CREATE") == spec.served_name:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        engine = FakeAsyncLLM(
            spec.served_name,
            spec.engine_args.get("max_model_len", 2048),
            spec.engine_args.get("runner", "generate"),
        )
        self.engines.append(engine)
        return engine

    def sampling_params(self, **fields: Any) -> SamplingParams:
        return SamplingParams(**fields, output_kind=RequestOutputKind.DELTA)

    def pooling_params(self, engine: Any, **fields: Any) -> PoolingParams:
        params = PoolingParams(**fields)
        params.verify("embed", getattr(engine, "model_config", None))
        return params


def factory() -> FakeFactory:
    return FakeFactory()
