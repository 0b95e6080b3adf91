"""The engine arguments IIR builds for a GPU box, handed to the installed vLLM's own classes.

vLLM's CPU build has the same ``AsyncEngineArgs`` and command-line parser as its GPU build, so a
misspelt or renamed argument, or a value vLLM does not accept, fails here and not on the box.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest
from vllm.config.parallel import DistributedExecutorBackend
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
from vllm.utils.argparse_utils import FlexibleArgumentParser

from iir.backends.local.vllm import engine_args
from iir.core.settings import load_settings

from .conftest import Models

GPU_BOX = {
    "IIR_API_KEY": "k" * 32,
    "IIR_VLLM_GPU_MEMORY_UTILIZATION": "0.85",
    "IIR_VLLM_MAX_MODEL_LEN": "8192",
    "IIR_VLLM_TENSOR_PARALLEL_SIZE": "2",
    "IIR_VLLM_PIPELINE_PARALLEL_SIZE": "1",
    "IIR_VLLM_DISTRIBUTED_BACKEND": "mp",
    "IIR_VLLM_DTYPE": "bfloat16",
    "IIR_VLLM_QUANTIZATION": "awq",
    "IIR_VLLM_ENFORCE_EAGER": "false",
}


@pytest.fixture
def model(models: Models) -> str:
    """A model folder that exists (offline, vLLM resolves the model name when it is built)."""
    return str(models.tiny)


def iir_args(model: str, **env: str) -> dict[str, Any]:
    settings = load_settings({**GPU_BOX, **env})
    return engine_args("llama", model, settings.vllm)


def parser() -> FlexibleArgumentParser:
    return AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())


def as_cli(args: dict[str, Any]) -> list[str]:
    """IIR's keyword arguments as ``vllm serve`` flags, through vLLM's own option names."""
    options = {a.dest: a for a in parser()._actions}
    argv: list[str] = []
    for key, value in args.items():
        flag = options[key].option_strings[0]
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def test_every_argument_is_an_asyncengineargs_field_with_its_value(model: str) -> None:
    args = iir_args(model)
    fields = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    assert set(args) <= fields, set(args) - fields
    built = AsyncEngineArgs(**args)
    for key, value in args.items():
        assert getattr(built, key) == value, key
    # Every setting reached the arguments (a setting dropped on the way fails here).
    assert (built.dtype, built.quantization, built.distributed_executor_backend) == (
        "bfloat16",
        "awq",
        "mp",
    )
    assert (built.gpu_memory_utilization, built.max_model_len) == (0.85, 8192)
    assert (built.tensor_parallel_size, built.pipeline_parallel_size) == (2, 1)
    assert built.enforce_eager is False and built.served_model_name == ["llama"]


def test_vllms_parser_reads_the_same_arguments(model: str) -> None:
    """What ``vllm serve`` would make of the same settings equals what IIR hands over."""
    args = iir_args(model)
    parsed = AsyncEngineArgs.from_cli_args(parser().parse_args(as_cli(args)))
    for key, value in args.items():
        assert getattr(parsed, key) == value, key


@pytest.mark.parametrize("dtype", ["auto", "half", "float16", "bfloat16", "float", "float32"])
def test_every_dtype_iir_accepts_is_one_of_vllms(dtype: str) -> None:
    [action] = [a for a in parser()._actions if a.dest == "dtype"]
    assert iir_args("m", IIR_VLLM_DTYPE=dtype)["dtype"] in action.choices


@pytest.mark.parametrize("backend", ["mp", "ray"])
def test_every_distributed_backend_iir_accepts_is_one_of_vllms(backend: str) -> None:
    value = iir_args("m", IIR_VLLM_DISTRIBUTED_BACKEND=backend)["distributed_executor_backend"]
    assert value in typing.get_args(DistributedExecutorBackend)


@pytest.mark.parametrize("method", ["awq", "gptq", "fp8"])
def test_quantization_methods_named_in_the_readme_exist(method: str) -> None:
    assert iir_args("m", IIR_VLLM_QUANTIZATION=method)["quantization"] in QUANTIZATION_METHODS


def test_defaults_leave_vllms_own(model: str) -> None:
    """Unset settings are not passed, so vLLM's defaults apply (dtype auto, 0.9 of the GPU)."""
    args = engine_args("m", model, load_settings({"IIR_API_KEY": "k" * 32}).vllm)
    built = AsyncEngineArgs(**args)
    assert (built.dtype, built.gpu_memory_utilization, built.max_model_len) == (
        AsyncEngineArgs.dtype,
        AsyncEngineArgs.gpu_memory_utilization,
        AsyncEngineArgs.max_model_len,
    )
