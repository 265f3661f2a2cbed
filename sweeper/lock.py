"""One measurement at a time on the whole machine: two sweeps (or a sweep and a compare) sharing
the CPU or GPU would make both wrong. ``run``, ``confirm``, ``compare`` and the service's sweeps
take the same file lock, so whoever started them, the second waits for the first."""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    # without fcntl or msvcrt filelock falls back to a lock file that it breaks when its holder
    # has died, and warns so on every start; that fallback is enough for one machine's sweeps
    warnings.simplefilter("ignore", UserWarning)
    from filelock import FileLock, Timeout


def home() -> Path:
    """sweeper's per-user folder (``SWEEPER_HOME``, else ``~/.sweeper``): the lock, the
    service's queue."""
    path = Path(os.environ.get("SWEEPER_HOME") or Path.home() / ".sweeper")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _paths() -> tuple[Path, Path]:
    base = home()
    return base / "measure.lock", base / "measure.json"


def holder() -> dict[str, Any] | None:
    """Who holds the machine now (what, pid, since), or None when nobody measures."""
    lock_path, info_path = _paths()
    probe = FileLock(lock_path)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        try:
            info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
            return info
        except (OSError, ValueError):
            return {"what": "another measurement", "pid": None, "since": None}
    probe.release()
    return None


def describe(info: dict[str, Any]) -> str:
    since = info.get("since")
    when = f", since {time.strftime('%H:%M', time.localtime(since))}" if since else ""
    return f"{info.get('what')} (pid {info.get('pid')}{when})"


@contextlib.contextmanager
def measuring(what: str, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the machine for ``what``; wait (saying for whom, once) while another holds it."""
    lock_path, info_path = _paths()
    lock = FileLock(lock_path)
    while True:
        try:
            lock.acquire(timeout=0)
            break
        except Timeout:
            info = holder()
            if info is None:  # it was free a moment later (or a page only looked): again
                continue
            if on_wait is not None:
                on_wait(f"waiting for another measurement to finish: {describe(info)}")
            lock.acquire()
            break
    try:
        info_path.write_text(
            json.dumps({"what": what, "pid": os.getpid(), "since": time.time()}), encoding="utf-8"
        )
        yield
    finally:
        with contextlib.suppress(OSError):
            info_path.unlink()
        lock.release()
