"""Hardware facts: the NVML-absent path on this box, and NVML's answers through a stand-in
``pynvml`` module (NVML is a third-party library; the stand-in has its function names)."""

from __future__ import annotations

import sys
import types
from collections import namedtuple
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from iir.ops.hardware import GpuCollector, Nvml, read_hardware

from .harness import Server

Memory = namedtuple("Memory", "total free used")
Utilization = namedtuple("Utilization", "gpu memory")


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


def fake_pynvml(init_error: Exception | None = None, unsupported: set[str] | None = None) -> Any:
    """Two H100s; functions named in ``unsupported`` raise NVMLError_NotSupported."""
    calls: dict[str, int] = {}
    mod = types.ModuleType("pynvml")
    mod.NVMLError = NVMLError  # type: ignore[attr-defined]
    mod.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
    mod.calls = calls  # type: ignore[attr-defined]
    answers: dict[str, Any] = {
        "nvmlSystemGetDriverVersion": lambda: "580.159.04",
        "nvmlSystemGetCudaDriverVersion_v2": lambda: 13000,
        "nvmlSystemGetCudaDriverVersion": lambda: 13000,
        "nvmlSystemGetNVMLVersion": lambda: b"13.580.159.04",
        "nvmlDeviceGetCount": lambda: 2,
        "nvmlDeviceGetHandleByIndex": lambda i: ("h", i),
        "nvmlDeviceGetName": lambda h: "NVIDIA H100 80GB HBM3",
        "nvmlDeviceGetUUID": lambda h: f"GPU-0000-{h[1]}",
        "nvmlDeviceGetMemoryInfo": lambda h: Memory(85_520_809_984, 84_987_805_696, 533_004_288),
        "nvmlDeviceGetUtilizationRates": lambda h: Utilization(37, 5),
        "nvmlDeviceGetTemperature": lambda h, sensor: 31 + h[1],
        "nvmlDeviceGetPowerUsage": lambda h: 71_234,
        "nvmlDeviceGetEnforcedPowerLimit": lambda h: 700_000,
        "nvmlShutdown": lambda: None,
    }

    def init() -> None:
        calls["nvmlInit"] = calls.get("nvmlInit", 0) + 1
        if init_error is not None:
            raise init_error

    mod.nvmlInit = init  # type: ignore[attr-defined]
    for name, fn in answers.items():

        def wrapped(*args: Any, _name: str = name, _fn: Any = fn) -> Any:
            calls[_name] = calls.get(_name, 0) + 1
            if unsupported and _name in unsupported:
                raise NVMLError_NotSupported("Not Supported")
            return _fn(*args)

        setattr(mod, name, wrapped)
    return mod


def test_without_nvml_gpus_are_empty_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        sys.modules,
        "pynvml",
        fake_pynvml(NVMLError_LibraryNotFound("NVML Shared Library Not Found")),
    )
    facts = read_hardware(Nvml())
    assert facts.gpus == []
    assert facts.gpu_reason == "NVML is not available: NVML Shared Library Not Found"
    assert facts.driver_version is None
    assert facts.cpu_count is not None and facts.cpu_count >= 1
    assert facts.memory_total_bytes is not None and facts.memory_total_bytes > 0


def test_without_the_pynvml_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes ``import pynvml`` fail
    facts = read_hardware(Nvml())
    assert facts.gpus == [] and facts.gpu_reason is not None and "nvidia-ml-py" in facts.gpu_reason


def test_nvml_facts_and_unsupported_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = fake_pynvml(unsupported={"nvmlDeviceGetPowerUsage", "nvmlDeviceGetUtilizationRates"})
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    facts = read_hardware(Nvml()).to_dict()
    assert facts["gpu_reason"] is None
    assert (facts["driver_version"], facts["cuda_driver_version"]) == ("580.159.04", "13.0")
    assert facts["nvml_version"] == "13.580.159.04"
    assert [g["index"] for g in facts["gpus"]] == [0, 1]
    g = facts["gpus"][1]
    assert g["name"] == "NVIDIA H100 80GB HBM3" and g["uuid"] == "GPU-0000-1"
    assert (g["memory_total_bytes"], g["memory_used_bytes"], g["memory_free_bytes"]) == (
        85_520_809_984,
        533_004_288,
        84_987_805_696,
    )
    assert g["temperature_celsius"] == 32 and g["power_limit_watts"] == 700.0
    # Unsupported facts are null, the rest still answer.
    assert g["power_usage_watts"] is None and g["utilization_gpu_percent"] is None


def test_nvml_is_opened_once_and_reopened_after_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    nvml = Nvml()
    nvml.read()
    nvml.read()
    assert mod.calls["nvmlInit"] == 1
    nvml.reset()
    nvml.read()
    assert mod.calls["nvmlInit"] == 2 and mod.calls["nvmlShutdown"] == 1


def test_gpu_gauges_read_at_scrape_time_through_a_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    registry = CollectorRegistry()
    registry.register(GpuCollector(Nvml(), ttl=3600))
    text = generate_latest(registry).decode()
    assert 'iir_gpu_memory_used_bytes{gpu="0"} 5.33004288e+08' in text
    assert 'iir_gpu_utilization_ratio{gpu="1"} 0.37' in text
    assert 'iir_gpu_temperature_celsius{gpu="1"} 32.0' in text
    reads = mod.calls["nvmlDeviceGetMemoryInfo"]
    generate_latest(registry)
    assert mod.calls["nvmlDeviceGetMemoryInfo"] == reads  # served from the cache
    fresh = CollectorRegistry()
    fresh.register(GpuCollector(Nvml(), ttl=0))
    generate_latest(fresh)
    generate_latest(fresh)
    assert mod.calls["nvmlDeviceGetMemoryInfo"] == reads + 4  # two GPUs, two scrapes


def test_gpu_gauges_without_nvml_are_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(NVMLError_LibraryNotFound("absent")))
    registry = CollectorRegistry()
    registry.register(GpuCollector(Nvml()))
    text = generate_latest(registry).decode()
    assert "# TYPE iir_gpu_memory_used_bytes gauge" in text
    assert "iir_gpu_memory_used_bytes{" not in text


def test_server_reports_this_box(server: Server) -> None:
    hw = httpx.get(server.url + "/v1/registry/status", headers=server.auth).json()["hardware"]
    real = read_hardware(Nvml())
    assert hw["cpu_count"] == real.cpu_count and hw["memory_total_bytes"] == real.memory_total_bytes
    assert [g["uuid"] for g in hw["gpus"]] == [g.uuid for g in real.gpus]
    assert (hw["gpu_reason"] is None) == bool(real.gpus)
    metrics = httpx.get(server.url + "/metrics").text
    for name in (
        "iir_gpu_memory_used_bytes",
        "iir_gpu_utilization_ratio",
        "iir_gpu_temperature_celsius",
    ):
        assert f"# TYPE {name} gauge" in metrics
