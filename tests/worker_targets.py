"""Functions run in worker processes by tests/test_system.py (spawned children import them)."""

from __future__ import annotations

import time
from multiprocessing.connection import Connection


def loop_until_stopped(results: Connection) -> None:
    """Works forever; when told to stop, says so on its way out (proof it unwound)."""
    results.send(("started",))
    try:
        while True:
            time.sleep(0.05)
    except SystemExit:
        results.send(("unwound",))
        raise
