"""GPU memory, when an NVIDIA GPU and its management library are present."""

from __future__ import annotations

import importlib
from typing import Any


def gpu_memory_used_mb() -> float | None:
    """Used memory of GPU 0 in MiB through NVML (``pip install nvidia-ml-py``), else None."""
    try:
        nvml: Any = importlib.import_module("pynvml")
        nvml.nvmlInit()
    except Exception:  # no library, no driver, no GPU: all mean "not measured"
        return None
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(0)
        return float(nvml.nvmlDeviceGetMemoryInfo(handle).used) / 2**20
    except Exception:
        return None
    finally:
        nvml.nvmlShutdown()
