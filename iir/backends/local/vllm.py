"""Local models on the box's own GPU: vLLM's ``AsyncLLM`` running inside the IIR process.

vLLM is an optional extra and is imported only when an engine is built, so IIR starts and serves
everything else without it (the registry status and the log say why local models are missing).
One engine per local model; engines are built one after the other by a loader task so that
start-up is never blocked and two loads never race for GPU memory.

Chat messages are rendered with the model's own chat template (``tokenizer.apply_chat_template``,
which is where vLLM's server ends up too) and tokenized here, so the prompt token count is the
model tokenizer's and the engine gets token ids. Streaming uses ``RequestOutputKind.DELTA``.

The engine is reached only through an :class:`EngineFactory`, so a test can drive this adapter
with a stand-in that has ``AsyncLLM``'s ``generate()``/``abort()`` signatures
(``IIR_VLLM_ENGINE_FACTORY``, tests only).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from iir.backends.base import Backend
from iir.backends.local.modeldir import FoundModel, scan
from iir.backends.local.surfaces import EMBED, LocalSurfaces
from iir.core.errors import ApiError, bad_request
from iir.core.protocol import ChatRequest, Message, ScrubbedChat
from iir.core.settings import Settings, VllmSettings
from iir.core.types import (
    FAILED,
    LOADING,
    READY,
    UNAVAILABLE,
    BackendStatus,
    Choice,
    Completion,
    Delta,
    Load,
    ModelCard,
    ModelStatus,
    StreamEvent,
    Usage,
)
from iir.ops import metrics

log = logging.getLogger("iir.local")

SOURCE = "local"
# Used only when neither the engine nor the settings know the context length.
FALLBACK_MAX_TOKENS = 4096
MAX_BACKOFF_S = 60.0
WATCH_INTERVAL_S = 2.0


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """What one engine is built from: the model and vLLM's ``AsyncEngineArgs`` keyword arguments."""

    served_name: str
    model: str
    engine_args: dict[str, Any]


def engine_args(served_name: str, model: str, s: VllmSettings) -> dict[str, Any]:
    args: dict[str, Any] = {
        "model": model,
        "served_model_name": [served_name],
        "tensor_parallel_size": s.tensor_parallel_size,
        "pipeline_parallel_size": s.pipeline_parallel_size,
    }
    optional = {
        "gpu_memory_utilization": s.gpu_memory_utilization,
        "max_model_len": s.max_model_len,
        "distributed_executor_backend": s.distributed_backend,
        "dtype": s.dtype,
        "quantization": s.quantization,
        "enforce_eager": s.enforce_eager,
    }
    args.update({k: v for k, v in optional.items() if v is not None})
    return args


class EngineFactory(Protocol):
    """Builds engines and names vLLM's parameter types (the only place vLLM is imported)."""

    def unavailable_reason(self) -> str | None:
        """Why no engine can be built on this box, or None."""

    def create(self, spec: EngineSpec) -> Any:
        """Builds an ``AsyncLLM`` (blocking: called in a worker thread)."""

    def sampling_params(self, **fields: Any) -> Any:
        """A ``SamplingParams`` with ``output_kind=RequestOutputKind.DELTA``."""

    def pooling_params(self, engine: Any, **fields: Any) -> Any:
        """A ``PoolingParams`` for the embed task, checked against ``engine``'s model."""


class VllmEngineFactory:
    """The real factory: vLLM's ``AsyncLLM.from_engine_args(AsyncEngineArgs(...))``.

    ``device`` is ``IIR_VLLM_DEVICE``: "auto" takes the platform vLLM detects (an NVIDIA or AMD
    GPU for vLLM's GPU builds, the CPU for its CPU build), "cuda" requires a GPU, and "cpu" makes
    vLLM use the CPU (``VLLM_TARGET_DEVICE=cpu``, a build that has CPU kernels)."""

    def __init__(self, device: str = "auto") -> None:
        self.device = device

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("vllm") is None:
            return (
                "vLLM is not installed (install IIR with the 'vllm' extra: pip install 'iir[vllm]')"
            )
        if self.device == "cpu":
            # Read by vLLM when it resolves its platform, here and in its engine processes.
            os.environ["VLLM_TARGET_DEVICE"] = "cpu"
        try:
            from vllm.platforms import current_platform

            found = str(current_platform.device_type or "")
        except Exception as exc:
            return f"vLLM cannot tell which device it runs on: {_error_text(exc)}"
        if not found:
            return (
                "vLLM found no device to run on (no GPU it can use, "
                "and this is not vLLM's CPU build)"
            )
        if self.device != "auto" and found != self.device:
            return f"IIR_VLLM_DEVICE={self.device}, but vLLM's platform here is {found!r}"
        return None

    def create(self, spec: EngineSpec) -> Any:
        from vllm import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        # As a server: vLLM then takes its server defaults, as `vllm serve` does (on large GPUs
        # up to 1024 sequences per batch instead of the 128 of an embedded engine).
        return AsyncLLM.from_engine_args(
            AsyncEngineArgs(**spec.engine_args), usage_context=UsageContext.OPENAI_API_SERVER
        )

    def sampling_params(self, **fields: Any) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(**fields, output_kind=RequestOutputKind.DELTA)

    def pooling_params(self, engine: Any, **fields: Any) -> Any:
        from vllm import PoolingParams

        params = PoolingParams(**fields)
        params.verify("embed", getattr(engine, "model_config", None))
        return params


def load_factory(ref: str | None, device: str = "auto") -> EngineFactory:
    """The real factory, or the stand-in named by ``module:attribute`` (tests only)."""
    if not ref:
        return VllmEngineFactory(device)
    module_name, _, attr = ref.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(f"IIR_VLLM_ENGINE_FACTORY={ref!r} cannot be loaded: {exc}") from None
    factory = target() if inspect.isclass(target) or inspect.isfunction(target) else target
    return cast(EngineFactory, factory)


@dataclass(slots=True)
class LocalModel:
    name: str
    model: str  # path or hub id handed to vLLM
    origin: str  # "configured" (IIR_LOCAL_MODELS) or "model_dir"
    state: str = UNAVAILABLE
    reason: str | None = None
    context_length: int | None = None
    engine: Any = None
    tokenizer: Any = None
    loaded_at: int = 0
    restarts: int = 0
    want_loaded: bool = False
    restart_task: asyncio.Task[None] | None = field(default=None, repr=False)
    runner: str = "generate"  # or "embed" (vLLM's pooling runner, for /v1/embeddings)


def _error_text(exc: BaseException) -> str:
    """The most telling message of an engine error (vLLM wraps the cause in a bare exception)."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen).strip()
        if text:
            return f"{type(seen).__name__}: {text}"[:500]
        seen = seen.__cause__
    return type(exc).__name__


def _message_dict(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.text() if m.content is not None else None}
    if m.name:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [tc.model_dump() for tc in m.tool_calls]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


def _top_logprob(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": max(float(logprob), -9999.0), "bytes": list(token.encode())}


class VllmBackend(LocalSurfaces, Backend):
    name = SOURCE
    local = True  # routing's "@local" stands for these models

    def __init__(self, settings: Settings, factory: EngineFactory | None = None) -> None:
        self.settings = settings
        self.vllm = settings.vllm
        self._factory_ref = settings.vllm.engine_factory
        self.factory: EngineFactory | None = factory
        self.unavailable: str | None = None
        self.model_dir_reason: str | None = None
        self._models: dict[str, LocalModel] = {}
        for served, model in settings.local_models:
            path, _, runner = model.partition("#")
            self._models[served] = LocalModel(
                served, path, "configured", want_loaded=True, runner=runner or "generate"
            )
        self._queue: asyncio.Queue[LocalModel] = asyncio.Queue()
        self._load_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        # Requests submitted to each model's engine and not finished (waiting or running): the
        # queue depth routing compares with IIR_LOCAL_MAX_QUEUE.
        self._inflight: dict[str, int] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.factory is None:
            try:
                self.factory = load_factory(self._factory_ref, self.vllm.device)
            except RuntimeError as exc:
                self.unavailable = str(exc)
        if self.factory is not None:
            self.unavailable = await asyncio.to_thread(self.factory.unavailable_reason)
        self._rescan()
        if not self._models:
            log.info("no local models configured (IIR_LOCAL_MODELS, IIR_MODEL_DIR)")
        elif self.unavailable:
            log.warning(
                "local models are unavailable",
                extra={"reason": self.unavailable, "event": "local_unavailable"},
            )
        self._tasks = [
            asyncio.create_task(self._loader(), name="iir-local-loader"),
            asyncio.create_task(self._watch(), name="iir-local-watch"),
        ]
        self._schedule_loads()

    async def close(self) -> None:
        self._closing = True
        tasks = list(self._tasks)
        tasks += [lm.restart_task for lm in self._models.values() if lm.restart_task]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(BaseException):
                await task
        for lm in self._models.values():
            await self._shutdown_engine(lm)

    # --- model list and status ----------------------------------------------------------------

    def _rescan(self) -> None:
        """Adds folders new in IIR_MODEL_DIR; never touches a model that is loaded or loading."""
        root = self.settings.model_dir
        if root is None:
            return
        found, self.model_dir_reason = scan(root)
        if self.model_dir_reason:
            log.warning("model directory", extra={"reason": self.model_dir_reason})
        present: dict[str, FoundModel] = {f.name: f for f in found}
        for name, lm in list(self._models.items()):
            gone = lm.origin == "model_dir" and name not in present
            if gone and lm.engine is None and lm.state != LOADING:
                if lm.restart_task is not None:
                    lm.restart_task.cancel()
                del self._models[name]
        for f in found:
            known = self._models.get(f.name)
            # Configured models win over folders of the same name; a folder already being
            # served, loaded or retried keeps its entry (and its engine) untouched.
            if known is not None and (known.origin == "configured" or known.want_loaded):
                continue
            lm = LocalModel(
                f.name, str(f.path), "model_dir", context_length=f.context_length, runner=f.runner
            )
            if f.problem:
                lm.state, lm.reason = UNAVAILABLE, f"incomplete model folder: {f.problem}"
            elif self.settings.autoload_models:
                lm.want_loaded = True
            else:
                lm.state = UNAVAILABLE
                lm.reason = (
                    "found in IIR_MODEL_DIR, not loaded: list it in IIR_LOCAL_MODELS "
                    "or set IIR_AUTOLOAD_MODELS=true"
                )
            self._models[f.name] = lm

    def _schedule_loads(self) -> None:
        for lm in self._models.values():
            if not lm.want_loaded or lm.engine is not None or lm.state == LOADING:
                continue
            if lm.state == FAILED and lm.restart_task is not None:
                continue
            if self.unavailable:
                lm.state, lm.reason = UNAVAILABLE, self.unavailable
                continue
            lm.state, lm.reason = LOADING, "queued"
            self._queue.put_nowait(lm)

    async def refresh(self) -> None:
        if self.factory is not None:
            self.unavailable = await asyncio.to_thread(self.factory.unavailable_reason)
        self._rescan()
        self._schedule_loads()

    def models(self) -> list[ModelCard]:
        return [
            ModelCard(lm.name, SOURCE, lm.loaded_at, lm.context_length)
            for lm in self._models.values()
            if lm.state == READY
        ]

    def resolve(self, name: str) -> str | None:
        return name if name in self._models else None

    def load(self, model: str) -> Load:
        return Load(queue=self._inflight.get(model, 0))

    def status(self) -> BackendStatus:
        models = [
            ModelStatus(lm.name, SOURCE, lm.state, lm.reason, lm.context_length)
            for lm in self._models.values()
        ]
        engine = {
            "available": self.unavailable is None,
            "reason": self.unavailable,
            "model_dir": str(self.settings.model_dir) if self.settings.model_dir else None,
            "model_dir_reason": self.model_dir_reason,
            "autoload": self.settings.autoload_models,
            "engines": [
                {
                    "model": lm.name,
                    "origin": lm.origin,
                    "restarts": lm.restarts,
                    "unfinished": _unfinished(lm.engine),
                }
                for lm in self._models.values()
                if lm.want_loaded
            ],
        }
        return BackendStatus(models=models, sections={"local_engine": engine})

    def degraded(self) -> list[str]:
        return [
            f"local model {lm.name}: {lm.reason}"
            for lm in self._models.values()
            if lm.state == FAILED
        ]

    def count_tokens(self, model: str, text: str) -> int | None:
        lm = self._models.get(model)
        if lm is None or lm.tokenizer is None:
            return None
        return len(lm.tokenizer.encode(text, add_special_tokens=False))

    # --- loading, watching, restarting --------------------------------------------------------

    async def _loader(self) -> None:
        while True:
            lm = await self._queue.get()
            if lm.engine is None and not self._closing:
                await self._load(lm)

    async def _load(self, lm: LocalModel, retry: bool = True) -> bool:
        """Builds ``lm``'s engine. A restart keeps the model ``failed`` (and /health degraded)
        until the new engine answers."""
        assert self.factory is not None
        args = engine_args(lm.name, lm.model, self.vllm)
        if lm.runner == EMBED:
            args["runner"] = "pooling"
        spec = EngineSpec(lm.name, lm.model, args)
        async with self._load_lock:
            if lm.state != FAILED:
                lm.state, lm.reason = LOADING, None
            log.info("loading local model", extra={"model": lm.name, "event": "local_loading"})
            started = time.monotonic()
            try:
                engine = await asyncio.to_thread(self.factory.create, spec)
                # Built off the event loop, AsyncLLM defers its output handler to the first
                # request; starting it here means an engine that fails while idle is seen at once.
                start_handler = getattr(engine, "_run_output_handler", None)
                if callable(start_handler):
                    start_handler()
                tokenizer = engine.get_tokenizer()
                if inspect.isawaitable(tokenizer):
                    tokenizer = await tokenizer
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # SystemExit from a failing engine core too
                lm.state, lm.reason = FAILED, f"engine could not be started: {_error_text(exc)}"
                log.error(
                    "local model failed to load",
                    extra={"model": lm.name, "reason": lm.reason, "event": "local_failed"},
                )
                if retry:
                    self._restart_later(lm)
                return False
        lm.engine, lm.tokenizer = engine, tokenizer
        ctx = getattr(getattr(engine, "model_config", None), "max_model_len", None)
        if isinstance(ctx, int) and ctx > 0:
            lm.context_length = ctx
        elif self.vllm.max_model_len:
            lm.context_length = self.vllm.max_model_len
        lm.state, lm.reason, lm.loaded_at = READY, None, int(time.time())
        log.info(
            "local model ready",
            extra={
                "model": lm.name,
                "event": "local_ready",
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        return True

    def _restart_later(self, lm: LocalModel) -> None:
        if self._closing or (lm.restart_task is not None and not lm.restart_task.done()):
            return
        lm.restart_task = asyncio.create_task(self._restart(lm), name=f"iir-restart-{lm.name}")

    async def _restart(self, lm: LocalModel) -> None:
        """Rebuilds a dead or failed engine, waiting longer after each failure (capped)."""
        delay = self.vllm.restart_backoff_s
        try:
            while not self._closing:
                await asyncio.sleep(delay)
                await self._shutdown_engine(lm)
                lm.restarts += 1
                if await self._load(lm, retry=False):
                    return
                delay = min(delay * 2, MAX_BACKOFF_S)
        finally:
            lm.restart_task = None

    async def _shutdown_engine(self, lm: LocalModel) -> None:
        engine, lm.engine, lm.tokenizer = lm.engine, None, None
        if engine is None:
            return
        shutdown = getattr(engine, "shutdown", None)
        if shutdown is not None:
            with suppress(Exception):
                result = await asyncio.to_thread(shutdown)
                if inspect.isawaitable(result):
                    await result

    def _mark_dead(self, lm: LocalModel, why: str) -> None:
        if lm.state != READY:
            return
        lm.state, lm.reason = FAILED, f"the vLLM engine died ({why}); restarting"
        log.error(
            "local engine died",
            extra={"model": lm.name, "reason": lm.reason, "event": "local_dead"},
        )
        self._restart_later(lm)

    async def _watch(self) -> None:
        """Notices an engine that died while idle (its EngineCore process exited)."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            for lm in list(self._models.values()):
                if lm.state == READY and lm.engine is not None and _errored(lm.engine):
                    self._mark_dead(lm, "engine reports errored")

    # --- requests -----------------------------------------------------------------------------

    def _ready(self, model: str) -> LocalModel:
        lm = self._models.get(model)
        if lm is None:
            raise ApiError(404, f"The model '{model}' does not exist", code="model_not_found")
        if lm.state == READY and lm.engine is not None and not _errored(lm.engine):
            return lm
        if lm.state == READY:
            self._mark_dead(lm, "engine reports errored")
        what = {LOADING: "is loading", FAILED: "has failed", UNAVAILABLE: "is unavailable"}
        reason = f": {lm.reason}" if lm.reason else ""
        raise ApiError(
            503,
            f"Local model '{model}' {what.get(lm.state, 'is not ready')}{reason}",
            code="model_unavailable",
            headers=[("retry-after", "5")],
        )

    def _render(self, lm: LocalModel, request: ChatRequest) -> list[int]:
        """Chat template then tokenizer, as vLLM's server does; returns the prompt's token ids."""
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
        if request.tools:
            kwargs["tools"] = request.tools
        messages = [_message_dict(m) for m in request.messages]
        try:
            prompt = lm.tokenizer.apply_chat_template(messages, **kwargs)
        except Exception as exc:
            raise bad_request(
                f"The chat template of '{lm.name}' rejected the messages: {_error_text(exc)}",
                param="messages",
            ) from None
        return list(lm.tokenizer.encode(prompt, add_special_tokens=False))

    def _sampling(self, lm: LocalModel, request: ChatRequest, prompt_len: int) -> Any:
        rf = request.response_format
        if rf and rf.get("type") not in (None, "text"):
            raise bad_request(
                "response_format other than 'text' is not supported by local models",
                param="response_format",
            )
        ctx = lm.context_length
        wanted = request.output_limit
        if ctx is not None:
            room = ctx - prompt_len
            if room <= 0 or (wanted is not None and wanted > room):
                asked = f" and {wanted} completion tokens were asked for" if wanted else ""
                raise bad_request(
                    f"This model's maximum context length is {ctx} tokens; the messages use "
                    f"{prompt_len} tokens{asked}",
                    param="messages",
                    code="context_length_exceeded",
                )
            max_tokens = wanted or room
        else:
            max_tokens = wanted or FALLBACK_MAX_TOKENS
        fields: dict[str, Any] = {"n": request.n, "max_tokens": max_tokens}
        for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
            value = getattr(request, name)
            if value is not None:
                fields[name] = value
        if request.stop_list:
            fields["stop"] = request.stop_list
        if request.logprobs:
            fields["logprobs"] = request.top_logprobs or 0
        if request.logit_bias:
            try:
                fields["logit_bias"] = {int(k): float(v) for k, v in request.logit_bias.items()}
            except ValueError:
                raise bad_request("logit_bias keys must be token ids", param="logit_bias") from None
        assert self.factory is not None
        try:
            return self.factory.sampling_params(**fields)
        except (ValueError, TypeError) as exc:
            raise bad_request(f"vLLM rejected the sampling parameters: {exc}") from None

    async def _prepare(self, request: ChatRequest, model: str) -> tuple[LocalModel, list[int], Any]:
        lm = self._ready(model)
        ids = await asyncio.to_thread(self._render, lm, request)
        return lm, ids, self._sampling(lm, request, len(ids))

    async def _generate(
        self, lm: LocalModel, prompt_ids: list[int], params: Any
    ) -> AsyncIterator[Any]:
        """The engine's DELTA outputs, with metrics, error mapping and abort on early exit."""
        engine = lm.engine
        rid = f"iir-{uuid.uuid4().hex}"
        label = lm.name
        metrics.LOCAL_WAITING.labels(label).inc()
        self._inflight[label] = self._inflight.get(label, 0) + 1
        waiting, running, finished = True, False, False
        started = time.perf_counter()
        gen = engine.generate({"prompt_token_ids": prompt_ids}, params, rid)
        try:
            async for out in gen:
                if waiting:
                    waiting, running = False, True
                    metrics.LOCAL_WAITING.labels(label).dec()
                    metrics.LOCAL_RUNNING.labels(label).inc()
                    metrics.LOCAL_TTFT.labels(label).observe(time.perf_counter() - started)
                produced = sum(len(c.token_ids) for c in out.outputs)
                if produced:
                    metrics.LOCAL_GENERATION_TOKENS.labels(label).inc(produced)
                finished = bool(out.finished)
                yield out
        except (asyncio.CancelledError, GeneratorExit, ApiError):
            raise
        except Exception as exc:
            text = _error_text(exc)
            if _errored(engine) or type(exc).__name__ == "EngineDeadError":
                self._mark_dead(lm, text)
            log.warning(
                "local engine error", extra={"model": lm.name, "error": text, "backend": SOURCE}
            )
            raise ApiError(502, f"vLLM backend error: {text}", code="upstream_error") from None
        finally:
            self._inflight[label] -= 1
            if waiting:
                metrics.LOCAL_WAITING.labels(label).dec()
            if running:
                metrics.LOCAL_RUNNING.labels(label).dec()
            with suppress(Exception):
                await gen.aclose()
            if not finished:
                # AsyncLLM aborts a closed generator itself; asking again is harmless and makes
                # the abort independent of how the generator was left.
                with suppress(Exception):
                    await engine.abort(rid)
                log.info(
                    "local generation aborted",
                    extra={"model": lm.name, "event": "local_abort", "backend": SOURCE},
                )

    def _logprobs(self, lm: LocalModel, c: Any, top: int) -> dict[str, Any] | None:
        if c.logprobs is None:
            return None
        content = []
        for tid, entry in zip(c.token_ids, c.logprobs, strict=False):
            ranked = sorted(entry.items(), key=lambda kv: getattr(kv[1], "rank", 0) or 0)
            chosen = entry.get(tid)

            def text(token_id: int, lp: Any) -> str:
                tok = getattr(lp, "decoded_token", None)
                return str(tok) if tok is not None else str(lm.tokenizer.decode([token_id]))

            token = text(tid, chosen) if chosen is not None else lm.tokenizer.decode([tid])
            item = _top_logprob(token, chosen.logprob if chosen is not None else -9999.0)
            item["top_logprobs"] = [_top_logprob(text(k, v), v.logprob) for k, v in ranked[:top]]
            content.append(item)
        return {"content": content, "refusal": None}

    @staticmethod
    def _finish(reason: str | None) -> str | None:
        if reason == "abort":
            raise ApiError(502, "vLLM backend error: the engine aborted the request")
        return reason

    async def complete(self, request: ScrubbedChat, model: str) -> Completion:
        """The stream, gathered: one code path talks to the engine."""
        texts: dict[int, list[str]] = {i: [] for i in range(request.n)}
        finish: dict[int, str] = {}
        lps: dict[int, list[dict[str, Any]]] = {}
        usage: Usage | None = None
        async with aclosing(self.stream(request, model)) as events:  # type: ignore[type-var]
            async for event in events:
                if isinstance(event, Usage):
                    usage = event
                    continue
                texts.setdefault(event.index, []).append(event.content or "")
                if event.finish_reason:
                    finish[event.index] = event.finish_reason
                if event.logprobs:
                    lps.setdefault(event.index, []).extend(event.logprobs["content"])
        choices = [
            Choice(
                index=i,
                content="".join(texts[i]),
                finish_reason=finish.get(i, "stop"),
                logprobs={"content": lps.get(i, []), "refusal": None} if request.logprobs else None,
            )
            for i in sorted(texts)
        ]
        return Completion(choices=choices, usage=usage)

    async def stream(self, request: ScrubbedChat, model: str) -> AsyncIterator[StreamEvent]:
        lm, ids, params = await self._prepare(request, model)
        top = request.top_logprobs or 0
        prompt_tokens, completion_tokens = len(ids), 0
        async with aclosing(self._generate(lm, ids, params)) as outputs:  # type: ignore[type-var]
            async for out in outputs:
                if out.prompt_token_ids:
                    prompt_tokens = len(out.prompt_token_ids)
                for c in out.outputs:
                    completion_tokens += len(c.token_ids)
                    if not c.text and not c.finish_reason:
                        continue
                    yield Delta(
                        index=c.index,
                        content=c.text,
                        finish_reason=self._finish(c.finish_reason),
                        logprobs=self._logprobs(lm, c, top) if request.logprobs else None,
                    )
        yield Usage(prompt_tokens, completion_tokens)


def _unfinished(engine: Any) -> int | None:
    """Requests the engine itself still holds (waiting or running); None without an engine."""
    if engine is None:
        return None
    try:
        return int(engine.get_num_unfinished_requests())
    except Exception:
        return None


def _errored(engine: Any) -> bool:
    try:
        return bool(getattr(engine, "errored", False))
    except Exception:
        return True
