"""Windows Job Objects through ctypes: every child sweeper starts joins one with kill-on-close,
so it dies when sweeper's handle closes (when sweeper exits, however it exits), and the job
carries the per-process memory cap. The system calls are passed in, so they can be recorded
where Windows is not."""

from __future__ import annotations

import ctypes
import sys
from typing import Any

JOB_OBJECT_LIMIT_PROCESS_MEMORY = 0x100
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000
JOB_OBJECT_EXTENDED_LIMIT_INFORMATION = 9
PROCESS_SET_QUOTA_AND_TERMINATE = 0x0100 | 0x0001


class _BasicLimits(ctypes.Structure):
    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_int64),
        ("PerJobUserTimeLimit", ctypes.c_int64),
        ("LimitFlags", ctypes.c_uint32),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", ctypes.c_uint32),
        ("Affinity", ctypes.c_size_t),
        ("PriorityClass", ctypes.c_uint32),
        ("SchedulingClass", ctypes.c_uint32),
    ]


class _ExtendedLimits(ctypes.Structure):
    _fields_ = [
        ("BasicLimitInformation", _BasicLimits),
        ("IoInfo", ctypes.c_uint64 * 6),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


class Job:
    """A Windows Job Object: every process assigned to it dies when the job's last handle
    closes, i.e. when sweeper exits, however it exits; with a memory cap when asked."""

    def __init__(self, kernel32: Any, memory_limit_mb: int | None = None) -> None:
        self.kernel32 = kernel32
        self.handle = kernel32.CreateJobObjectW(None, None)
        if not self.handle:
            raise OSError("CreateJobObjectW failed")
        info = _ExtendedLimits()
        flags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        if memory_limit_mb:
            flags |= JOB_OBJECT_LIMIT_PROCESS_MEMORY
            info.ProcessMemoryLimit = memory_limit_mb * 2**20
        info.BasicLimitInformation.LimitFlags = flags
        ok = kernel32.SetInformationJobObject(
            self.handle,
            JOB_OBJECT_EXTENDED_LIMIT_INFORMATION,
            ctypes.byref(info),
            ctypes.sizeof(info),
        )
        if not ok:
            raise OSError("SetInformationJobObject failed")

    def assign(self, pid: int) -> None:
        process = self.kernel32.OpenProcess(PROCESS_SET_QUOTA_AND_TERMINATE, False, pid)
        try:
            if not self.kernel32.AssignProcessToJobObject(self.handle, process):
                raise OSError(f"AssignProcessToJobObject failed for process {pid}")
        finally:
            self.kernel32.CloseHandle(process)


_JOBS: dict[int | None, Job] = {}


def job_for(memory_limit_mb: int | None) -> Job | None:
    """This process's job object for children with this memory cap (Windows only)."""
    if sys.platform != "win32":
        return None
    if memory_limit_mb not in _JOBS:
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        _JOBS[memory_limit_mb] = Job(kernel32, memory_limit_mb)
    return _JOBS[memory_limit_mb]
