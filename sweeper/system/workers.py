"""Trial workers: a Python function in a fresh process that dies with sweeper, is capped in
memory, and is stopped by a message on its control pipe first (every platform), then for good.
On Linux it forks from a fork server; elsewhere it is a spawned interpreter."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from sweeper.system.machine import cap_memory
from sweeper.system.processes import (
    PLATFORM,
    STOP_SIGNALS,
    die_with_parent,
    hold_stop_signals,
)
from sweeper.system.windows import job_for


def worker_start_method(platform: str = PLATFORM) -> str:
    """How a worker starts. On Linux it forks from a fork server that imported the worker's
    module once: a spawned interpreter takes about 0.2 s more to start and import it, every
    trial and every confirmation round (benchmarks/worker_start.py). Elsewhere a fresh
    interpreter: Windows has no fork, and macOS's system libraries are not safe to fork."""
    return "forkserver" if platform.startswith("linux") else "spawn"


def _start_helpers(method: str) -> None:
    """multiprocessing's helper processes, started before a worker's start holds the stop
    signals. Its resource tracker first: starting it releases them, whatever they were (it
    blocks, then unblocks, SIGINT and SIGTERM). Then the fork server, holding them, which keeps
    them held for good: a SIGTERM to the whole process group (systemd, ``timeout``) must not end
    it, or its workers would die by their death signal before they unwind and unload. And
    without the working directory on its path: it runs as ``python -c``, whose path starts
    there, so a ``random.py`` or ``sweeper.py`` beside the user's study would be imported in
    place of the real one, by the server and every worker forked from it."""
    if PLATFORM == "win32":
        return
    from multiprocessing import forkserver, resource_tracker

    resource_tracker.ensure_running()
    if method != "forkserver":
        return
    safe = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        with hold_stop_signals():
            forkserver.ensure_running()
    finally:
        if safe is None:
            del os.environ["PYTHONSAFEPATH"]
        else:
            os.environ["PYTHONSAFEPATH"] = safe


class Worker:
    """A supervised child running ``target(results, *args)`` in a fresh process: it dies with
    sweeper, is capped in memory, and is stopped by a message first. Its environment is
    sweeper's when it starts, as a spawned interpreter's is (a fork server's is its own)."""

    def __init__(
        self, target: Callable[..., None], args: tuple[Any, ...], memory_limit_mb: int | None = None
    ) -> None:
        self._method = method = worker_start_method()
        # a BaseContext to the type checker, which knows Process only on each context's class
        ctx: Any = multiprocessing.get_context(method)
        env = None
        if method == "forkserver":  # the server imports the target's module once, at its start
            ctx.set_forkserver_preload([target.__module__])
            env = dict(os.environ)
        self.results, results_w = ctx.Pipe(duplex=False)
        control_r, self._control = ctx.Pipe(duplex=False)
        self.process: multiprocessing.process.BaseProcess = ctx.Process(
            target=_worker_main,
            args=(target, results_w, control_r, os.getpid(), memory_limit_mb, env, args),
            daemon=True,
        )
        self._ends = (results_w, control_r)
        self.memory_limit_mb = memory_limit_mb

    def start(self) -> None:
        _start_helpers(self._method)
        with hold_stop_signals():
            try:
                self.process.start()
            finally:
                for end in self._ends:
                    end.close()
        job = job_for(self.memory_limit_mb)
        if job is not None and self.process.pid is not None:
            job.assign(self.process.pid)

    def stop(self, grace_s: float = 5.0) -> None:
        """Ask the worker to stop (it unwinds, so a backend unloads its model), then end it."""
        proc = self.process
        if proc.pid is not None and proc.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self._control.send(("stop",))
            proc.join(grace_s)
            if proc.is_alive():
                proc.terminate()
                proc.join(3)
            if proc.is_alive():
                proc.kill()
        if proc.pid is not None:
            proc.join()
        self.results.close()
        self._control.close()


def _worker_main(
    target: Callable[..., None],
    results: Connection,
    control: Connection,
    parent_pid: int,
    memory_limit_mb: int | None,
    env: dict[str, str] | None,
    args: tuple[Any, ...],
) -> None:
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    # Ctrl-C reaches the whole process group (or console); the parent decides about the trial
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_stop)
    if sys.platform != "win32":
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held by the parent
    die_with_parent(parent_pid)
    if memory_limit_mb:
        note = cap_memory(memory_limit_mb)
        if note:
            print(f"sweeper: {note}", file=sys.stderr)
    threading.Thread(target=_listen, args=(control,), daemon=True).start()
    target(results, *args)


def _listen(control: Connection) -> None:
    """The parent's stop message: unwind the main thread as SIGTERM would, on every platform."""
    import _thread

    with contextlib.suppress(EOFError, OSError):
        if control.recv() == ("stop",):
            _thread.interrupt_main(signal.SIGTERM)


def _exit_on_stop(signum: int, frame: object) -> None:
    # once: a SIGTERM to the whole process group reaches the worker and then sweeper, whose
    # stop message would cut the unwinding (the unload) short; stop() ends a worker that hangs
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)
