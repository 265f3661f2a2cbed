"""Functions run in worker processes by tests/test_system.py (spawned children import them)."""

from __future__ import annotations

import os
import time
from multiprocessing.connection import Connection
from pathlib import Path


def loop_until_stopped(results: Connection) -> None:
    """Works forever; when told to stop, says so on its way out (proof it unwound)."""
    try:  # from the word on: a stop may land as soon as it is sent
        results.send(("started",))
        while True:
            time.sleep(0.05)
    except SystemExit:
        results.send(("unwound",))
        raise


def say_environment(results: Connection, name: str) -> None:
    """Sends the value of environment variable ``name`` as this worker sees it."""
    results.send((os.environ.get(name),))


def say_pid_and_wait(results: Connection) -> None:
    """Sends its pid, then waits to be killed with its parent."""
    results.send((os.getpid(),))
    time.sleep(120)


def unwind_slowly(results: Connection, marker: str) -> None:
    """Works until stopped; on its way out takes a second, as an unload does, then leaves
    ``marker`` (proof it was not killed while unwinding)."""
    try:  # from the word on: a stop may land as soon as it is sent
        results.send(("started",))
        while True:
            time.sleep(0.05)
    except SystemExit:
        time.sleep(1.0)
        Path(marker).write_text("unwound")
        raise
