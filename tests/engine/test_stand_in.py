"""The stand-in engine of the fast suite (tests/fake_vllm.py) against the installed vLLM.

The fast suite drives IIR's vLLM adapter through the stand-in; these checks keep it honest: every
method, constructor and field IIR uses has the same name, parameters and defaults in both, so a
vLLM release that renames or reorders something fails here rather than on the GPU box.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
from typing import Any

import pytest
from vllm import SamplingParams
from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from .. import fake_vllm


def shape(fn: Any) -> list[tuple[str, Any, Any]]:
    """Parameter names, kinds and defaults (annotations differ: the stand-in uses ``Any``)."""
    params = inspect.signature(fn).parameters.values()
    return [(p.name, p.kind, p.default) for p in params if p.name != "self"]


# The engine methods IIR calls (iir/backends/vllm.py) and the stand-in implements.
METHODS = ["generate", "abort", "shutdown", "get_tokenizer", "get_num_unfinished_requests"]


@pytest.mark.parametrize("name", METHODS)
def test_engine_methods_have_asyncllm_signatures(name: str) -> None:
    real, fake = getattr(AsyncLLM, name), getattr(fake_vllm.FakeAsyncLLM, name)
    assert shape(fake) == shape(real)
    assert inspect.iscoroutinefunction(fake) == inspect.iscoroutinefunction(real)
    assert inspect.isasyncgenfunction(fake) == inspect.isasyncgenfunction(real)


def test_errored_is_a_property_in_both() -> None:
    assert isinstance(inspect.getattr_static(AsyncLLM, "errored"), property)
    assert isinstance(inspect.getattr_static(fake_vllm.FakeAsyncLLM, "errored"), property)


def test_sampling_params_fields_and_defaults() -> None:
    """Same keyword names, and the same values when left out (as each constructor stores them)."""
    real, fake = SamplingParams(), fake_vllm.SamplingParams()
    for name, kind, _ in shape(fake_vllm.SamplingParams):
        assert kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert hasattr(real, name), name
        want, got = getattr(real, name), getattr(fake, name)
        if isinstance(want, enum.Enum):  # each side has its own enum class
            want, got = (want.name, want.value), (got.name, got.value)
        assert got == want, name


def test_output_kinds() -> None:
    assert {k.name: k.value for k in fake_vllm.RequestOutputKind} == {
        k.name: k.value for k in RequestOutputKind
    }


def leading(fn: Any, count: int) -> list[tuple[str, Any, Any]]:
    return shape(fn)[:count]


@pytest.mark.parametrize(
    ("fake", "real"),
    [
        (fake_vllm.CompletionOutput, CompletionOutput),
        (fake_vllm.RequestOutput, RequestOutput),
        (fake_vllm.Logprob, Logprob),
    ],
)
def test_output_types_take_the_same_arguments(fake: type, real: type) -> None:
    """The stand-in's constructor is the leading part of vLLM's (vLLM may add fields at the end);
    every field IIR reads exists in both."""
    fake_shape = shape(fake)
    real_names = [n for n, _, _ in shape(real)]
    assert fake_shape == leading(real, len(fake_shape)), (fake_shape, real_names)


def test_fields_iir_reads_exist() -> None:
    completion = {f.name for f in dataclasses.fields(CompletionOutput)}
    assert {"index", "text", "token_ids", "logprobs", "finish_reason"} <= completion
    request = set(inspect.signature(RequestOutput).parameters)
    assert {"prompt_token_ids", "outputs", "finished"} <= request
    assert {"logprob", "rank", "decoded_token"} <= {f.name for f in dataclasses.fields(Logprob)}
