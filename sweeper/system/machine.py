"""The machine: memory (the cap on a worker, its peak), keeping the machine awake, its identity
(CPU, RAM, GPUs) and where LM Studio keeps its files."""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("sweeper")
PLATFORM = sys.platform


# ---- memory ---------------------------------------------------------------------------------


def maxrss_mb(maxrss: int, platform: str = PLATFORM) -> float:
    """``ru_maxrss`` in MiB: KiB on Linux, bytes on macOS."""
    return maxrss / 2**20 if platform == "darwin" else maxrss / 1024


def peak_rss_mb() -> float | None:
    """The peak resident memory of this process, in MiB."""
    if sys.platform == "win32":
        import psutil

        info: Any = psutil.Process().memory_info()  # peak_wset: Windows only
        return float(info.peak_wset) / 2**20
    try:
        import resource
    except ImportError:  # no POSIX resource module: not measured
        return None
    return maxrss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def cap_memory(limit_mb: int, platform: str = PLATFORM) -> str | None:
    """In a worker: fail fast as "out of memory" past ``limit_mb`` instead of swapping. Returns
    why the cap is not enforced here, or None (Windows: the job object carries the cap)."""
    if platform == "darwin":
        return "memory_limit_mb is not enforced on macOS"
    if platform == "win32" or sys.platform == "win32":
        return None
    try:
        import resource
    except ImportError:
        return "memory_limit_mb is not enforced here (no resource module)"
    limit = limit_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return None


# ---- the machine ----------------------------------------------------------------------------


@contextlib.contextmanager
def keep_awake() -> Iterator[bool]:
    """Keep the machine from sleeping while a sweep runs (a laptop's night); yields whether
    that worked. Where no method exists (a server without a desktop session) it says so once."""
    try:
        from wakepy import keep

        mode = keep.running(on_fail="pass")
    except ImportError:
        yield False
        return
    with mode as m:
        if not m.active:
            log.info("could not keep the machine awake here; make sure it does not sleep")
        yield bool(m.active)


def cpu_name(platform: str = PLATFORM) -> str:
    """The CPU's model name, as the OS reports it."""
    if platform.startswith("linux"):
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    elif platform == "darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            if out.stdout.strip():
                return out.stdout.strip()
    elif platform == "win32" and sys.platform == "win32":
        import winreg

        with contextlib.suppress(OSError):
            key = winreg.OpenKey(
                winreg.HKEY_LOCAL_MACHINE, r"HARDWARE\DESCRIPTION\System\CentralProcessor\0"
            )
            return str(winreg.QueryValueEx(key, "ProcessorNameString")[0]).strip()
    import platform as platform_mod

    return platform_mod.processor() or platform_mod.machine()


def ram_gb(platform: str = PLATFORM) -> float | None:
    """Physical memory in GiB, one decimal."""
    if platform.startswith("linux"):  # as sweeper always read it: studies keep their identity
        with contextlib.suppress(OSError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    try:
        import psutil
    except ImportError:
        return None
    return round(float(psutil.virtual_memory().total) / 2**30, 1)


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs by nvidia-smi (name, memory, driver); empty where there is none."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, memory, driver = (part.strip() for part in line.split(",", 2))
        gpus.append({"name": name, "memory": memory, "driver": driver})
    return gpus


def lmstudio_home(home: Path | None = None) -> Path:
    """LM Studio's home as ``lms`` finds it: the path in ``~/.lmstudio-home-pointer`` when that
    file exists, else ``~/.lmstudio``."""
    home = home or Path.home()
    pointer = home / ".lmstudio-home-pointer"
    with contextlib.suppress(OSError):
        target = pointer.read_text(encoding="utf-8").strip()
        if target:
            return Path(target)
    return home / ".lmstudio"
