"""Facts about the box IIR runs on: GPUs from NVML, CPU count and RAM.

NVML is read through the ``nvidia-ml-py`` distribution (module ``pynvml``). Every NVML call can fail
on its own (a driver without the feature answers ``NVMLError_NotSupported``), so each one is
wrapped: a fact that cannot be read is ``null``, never an exception. Without NVML at all the GPU
list is empty and ``gpu_reason`` says why.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger("iir.ops.hardware")


@dataclass(slots=True)
class GpuFacts:
    index: int
    name: str | None = None
    uuid: str | None = None
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    utilization_gpu_percent: int | None = None
    utilization_memory_percent: int | None = None
    temperature_celsius: int | None = None
    power_usage_watts: float | None = None
    power_limit_watts: float | None = None


@dataclass(slots=True)
class HardwareFacts:
    gpus: list[GpuFacts] = field(default_factory=list)
    gpu_reason: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    nvml_version: str | None = None
    cpu_count: int | None = None
    memory_total_bytes: int | None = None
    memory_available_bytes: int | None = None
    read_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Nvml:
    """One process-wide NVML session, opened on first use and reopened after a failure."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = False
        self.reason: str | None = None
        self._module: Any = None

    def _open(self) -> Any:
        if self._ready:
            return self._module
        try:
            import pynvml
        except ImportError:
            self.reason = "the nvidia-ml-py package (pynvml) is not installed"
            return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self.reason = f"NVML is not available: {exc}"
            return None
        except OSError as exc:  # a broken libnvidia-ml can fail to load outside NVML's own errors
            self.reason = f"NVML could not be loaded: {exc}"
            return None
        self._module = pynvml
        self._ready = True
        self.reason = None
        return pynvml

    def reset(self) -> None:
        """Closes the session so that the next read starts a fresh one (after a refresh)."""
        with self._lock:
            if self._ready and self._module is not None:
                with suppress(self._module.NVMLError):
                    self._module.nvmlShutdown()
            self._ready = False

    def read(self, full: bool = True) -> tuple[list[GpuFacts], dict[str, str | None], str | None]:
        """GPU facts, driver facts and the reason when NVML cannot be used."""
        with self._lock:
            nv = self._open()
            if nv is None:
                return [], {}, self.reason

            def call(fn: Callable[..., Any], *args: Any) -> Any:
                try:
                    return fn(*args)
                except nv.NVMLError:
                    return None

            driver: dict[str, str | None] = {}
            if full:
                version = call(nv.nvmlSystemGetDriverVersion)
                driver["driver_version"] = _text(version) if version is not None else None
                cuda = call(nv.nvmlSystemGetCudaDriverVersion_v2) or call(
                    nv.nvmlSystemGetCudaDriverVersion
                )
                driver["cuda_driver_version"] = (
                    f"{cuda // 1000}.{(cuda % 1000) // 10}" if isinstance(cuda, int) else None
                )
                nvml_version = call(nv.nvmlSystemGetNVMLVersion)
                driver["nvml_version"] = _text(nvml_version) if nvml_version is not None else None
            count = call(nv.nvmlDeviceGetCount)
            if count is None:
                return [], driver, "NVML answered but could not count the GPUs"
            if count == 0:
                return [], driver, "NVML reports no GPUs"
            gpus: list[GpuFacts] = []
            for i in range(count):
                handle = call(nv.nvmlDeviceGetHandleByIndex, i)
                g = GpuFacts(index=i)
                gpus.append(g)
                if handle is None:
                    continue
                if full:
                    name = call(nv.nvmlDeviceGetName, handle)
                    g.name = _text(name) if name is not None else None
                    uuid = call(nv.nvmlDeviceGetUUID, handle)
                    g.uuid = _text(uuid) if uuid is not None else None
                    limit = call(nv.nvmlDeviceGetEnforcedPowerLimit, handle)
                    g.power_limit_watts = limit / 1000.0 if limit is not None else None
                    power = call(nv.nvmlDeviceGetPowerUsage, handle)
                    g.power_usage_watts = power / 1000.0 if power is not None else None
                mem = call(nv.nvmlDeviceGetMemoryInfo, handle)
                if mem is not None:
                    g.memory_total_bytes = int(mem.total)
                    g.memory_used_bytes = int(mem.used)
                    g.memory_free_bytes = int(mem.free)
                util = call(nv.nvmlDeviceGetUtilizationRates, handle)
                if util is not None:
                    g.utilization_gpu_percent = int(util.gpu)
                    g.utilization_memory_percent = int(util.memory)
                temp = call(nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU)
                g.temperature_celsius = int(temp) if temp is not None else None
            return gpus, driver, None


NVML = Nvml()


def _meminfo() -> tuple[int | None, int | None]:
    """Total and available RAM from /proc/meminfo (Linux), else from sysconf."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            values = {}
            for line in fh:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    values[key] = int(parts[0]) * 1024
        return values.get("MemTotal"), values.get("MemAvailable")
    except OSError:
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
        return pages * size, None
    except (ValueError, OSError, AttributeError):
        return None, None


def read_hardware(nvml: Nvml = NVML) -> HardwareFacts:
    gpus, driver, reason = nvml.read(full=True)
    total, available = _meminfo()
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return HardwareFacts(
        gpus=gpus,
        gpu_reason=reason,
        driver_version=driver.get("driver_version"),
        cuda_driver_version=driver.get("cuda_driver_version"),
        nvml_version=driver.get("nvml_version"),
        cpu_count=len(cpus) if cpus else os.cpu_count(),
        memory_total_bytes=total,
        memory_available_bytes=available,
        read_at=time.time(),
    )


class GpuCollector(Collector):
    """GPU gauges read at scrape time; a short cache keeps a scrape storm off the driver."""

    def __init__(self, nvml: Nvml = NVML, ttl: float = 2.0) -> None:
        self.nvml = nvml
        self.ttl = ttl
        self._cached: list[GpuFacts] = []
        self._at = -1e9
        self._lock = threading.Lock()

    def _gpus(self) -> list[GpuFacts]:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self.ttl:
                self._cached, _, _ = self.nvml.read(full=False)
                self._at = now
            return self._cached

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "iir_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["gpu"]
            ),
            GaugeMetricFamily(
                "iir_gpu_utilization_ratio",
                "Share of time the GPU was busy over NVML's last sample period (0-1)",
                labels=["gpu"],
            ),
            GaugeMetricFamily(
                "iir_gpu_temperature_celsius", "GPU core temperature", labels=["gpu"]
            ),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        mem, util, temp = self._families()
        for g in self._gpus():
            label = [str(g.index)]
            if g.memory_used_bytes is not None:
                mem.add_metric(label, g.memory_used_bytes)
            if g.utilization_gpu_percent is not None:
                util.add_metric(label, g.utilization_gpu_percent / 100.0)
            if g.temperature_celsius is not None:
                temp.add_metric(label, g.temperature_celsius)
        yield mem
        yield util
        yield temp


_registered: set[int] = set()


def register_gpu_metrics(registry: CollectorRegistry) -> None:
    """Adds the GPU gauges to ``registry`` once per process."""
    if id(registry) in _registered:
        return
    registry.register(GpuCollector())
    _registered.add(id(registry))
