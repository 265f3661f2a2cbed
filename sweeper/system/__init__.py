"""The operating system: every process sweeper starts (trial workers, llama-server, a service's
sweeps) and what sweeper needs from the OS around them. The one module that branches on the
platform, chosen once by ``sys.platform``:

- Linux: a child gets SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), the memory cap is
  the address-space limit, peak memory is ``ru_maxrss`` in KiB;
- macOS: a watchdog in the child exits when its parent is gone (a watcher process does it for
  programs), the memory cap is reported as not enforced, ``ru_maxrss`` is in bytes;
- Windows: children join a Job Object that kills them when sweeper's handle closes (however
  sweeper ends) and carries the memory cap; there are no POSIX signal masks.

A worker is stopped gently first, by a message on its control pipe (every platform), then for
good. POSIX-only modules are imported where they are used, so sweeper starts without them.
"""

from __future__ import annotations

import sys

PLATFORM = sys.platform

from sweeper.system.machine import (  # noqa: E402
    cap_memory,
    cpu_name,
    gpus,
    keep_awake,
    lmstudio_home,
    maxrss_mb,
    peak_rss_mb,
    ram_gb,
)
from sweeper.system.processes import (  # noqa: E402
    Program,
    Stopping,
    die_with_parent,
    exit_description,
    hold_stop_signals,
    interruptible,
    process_alive,
    raise_if_stopped,
    run_capture,
    stop_between_trials,
    terminate_as_interrupt,
    watch_parent,
)
from sweeper.system.windows import Job  # noqa: E402
from sweeper.system.workers import Worker, worker_start_method  # noqa: E402

__all__ = [
    "PLATFORM",
    "Job",
    "Program",
    "Stopping",
    "Worker",
    "cap_memory",
    "cpu_name",
    "die_with_parent",
    "exit_description",
    "gpus",
    "hold_stop_signals",
    "interruptible",
    "keep_awake",
    "lmstudio_home",
    "maxrss_mb",
    "peak_rss_mb",
    "process_alive",
    "raise_if_stopped",
    "ram_gb",
    "run_capture",
    "stop_between_trials",
    "terminate_as_interrupt",
    "watch_parent",
    "worker_start_method",
]
