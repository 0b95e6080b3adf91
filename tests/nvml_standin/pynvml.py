"""A stand-in for NVIDIA's ``pynvml`` module (nvidia-ml-py, a third-party library), for a real
``iir serve`` on a machine without a GPU: put this folder first on ``PYTHONPATH``.

It answers the calls :mod:`iir.ops.hardware` makes, with the names and shapes of nvidia-ml-py's
(bytes or str, milliwatts, a memory struct with total/free/used). Two H100s whose utilisation,
memory, temperature and power move with the clock, so that a console drawing a history of them
has something to draw. ``IIR_STANDIN_GPUS`` sets the number of GPUs (default 2).
"""

from __future__ import annotations

import math
import os
import time
from collections import namedtuple
from typing import Any

NVML_TEMPERATURE_GPU = 0
_Memory = namedtuple("_Memory", "total free used")
_Utilization = namedtuple("_Utilization", "gpu memory")
_TOTAL = 85_520_809_984


class NVMLError(Exception):
    pass


def _wave(index: int, period: float) -> float:
    """0..1, a different phase per GPU."""
    return 0.5 + 0.5 * math.sin(time.time() * 2 * math.pi / period + index * 1.9)


def nvmlInit() -> None:
    pass


def nvmlShutdown() -> None:
    pass


def nvmlSystemGetDriverVersion() -> str:
    return "580.159.04"


def nvmlSystemGetCudaDriverVersion_v2() -> int:
    return 13000


def nvmlSystemGetCudaDriverVersion() -> int:
    return 13000


def nvmlSystemGetNVMLVersion() -> str:
    return "13.580.159.04"


def nvmlDeviceGetCount() -> int:
    return int(os.environ.get("IIR_STANDIN_GPUS", "2"))


def nvmlDeviceGetHandleByIndex(index: int) -> Any:
    if not 0 <= index < nvmlDeviceGetCount():
        raise NVMLError("Invalid Argument")
    return ("gpu", index)


def nvmlDeviceGetName(handle: Any) -> str:
    return "NVIDIA H100 80GB HBM3"


def nvmlDeviceGetUUID(handle: Any) -> str:
    return f"GPU-5f1c0d3e-9a2b-4c71-8e0f-00000000000{handle[1]}"


def nvmlDeviceGetMemoryInfo(handle: Any) -> Any:
    used = int(_TOTAL * (0.62 + 0.25 * _wave(handle[1], 90)))
    return _Memory(_TOTAL, _TOTAL - used, used)


def nvmlDeviceGetUtilizationRates(handle: Any) -> Any:
    gpu = round(20 + 75 * _wave(handle[1], 40))
    return _Utilization(gpu, gpu // 2)


def nvmlDeviceGetTemperature(handle: Any, sensor: int) -> int:
    return round(38 + 30 * _wave(handle[1], 60))


def nvmlDeviceGetPowerUsage(handle: Any) -> int:
    return round(1000 * (90 + 520 * _wave(handle[1], 40)))


def nvmlDeviceGetEnforcedPowerLimit(handle: Any) -> int:
    return 700_000
