"""Every process sweeper starts dies with sweeper (trial workers: ``workers.py``) and is
stopped gently (SIGTERM, Ctrl-Break) before for good: programs (llama-server, sweeps started by
the service). And the stop signals."""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeper.system.windows import job_for

PLATFORM = sys.platform
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


# ---- dying with the parent ------------------------------------------------------------------


def die_with_parent(parent_pid: int, platform: str = PLATFORM) -> None:
    """In a child: make sure it does not outlive ``parent_pid``, even after a kill -9 of the
    parent, so no orphan keeps generating (and holding the model) after its sweep is gone."""
    if platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: when our parent goes
            if os.getppid() == parent_pid:  # started by sweeper itself: the kernel sees to it
                return
            # forked by sweeper's fork server, which lives on after sweeper while a worker it
            # forked holds its pipe (as multiprocessing gives each): watch sweeper too
    # macOS, Windows (behind its job object), a worker of a fork server: watch the parent
    watch_parent(parent_pid)


def watch_parent(
    parent_pid: int,
    alive: Callable[[int], bool] | None = None,
    exit: Callable[[int], None] = os._exit,
    interval_s: float = 0.5,
) -> threading.Thread:
    """A daemon thread that ends this process as soon as ``parent_pid`` is gone."""
    is_alive = alive or _pid_alive

    def watch() -> None:
        while is_alive(parent_pid):
            time.sleep(interval_s)
        exit(1)

    thread = threading.Thread(target=watch, name="sweeper-watchdog", daemon=True)
    thread.start()
    return thread


def _pid_alive(pid: int) -> bool:
    return process_alive(pid)


def process_alive(pid: int, since: datetime.datetime | None = None) -> bool:
    """``pid`` is a live process and, given ``since`` (local time), one that already ran
    then: a pid the OS has since handed to a newer process is not the one that was there."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return since is None or process.create_time() <= since.timestamp() + 1.0
    except psutil.AccessDenied:  # another user's process: there, whatever it is
        return True
    except psutil.Error:
        return False


# ---- signals --------------------------------------------------------------------------------


@contextlib.contextmanager
def hold_stop_signals() -> Iterator[None]:
    """Ctrl-C or SIGTERM while a worker starts would break its start-up half-way: hold them
    until it has started (POSIX; the child inherits the mask and releases it)."""
    if sys.platform == "win32":
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


@dataclass(eq=False)
class Stopping:
    """How a session was stopped: by termination (SIGTERM, Ctrl-Break, a service's Stop) or
    by Ctrl-C (KeyboardInterrupt either way); ``requested`` stays set once either arrived."""

    terminated: bool = False
    requested: bool = False


#: the sessions open in this process, innermost last
_sessions: list[Stopping] = []
#: inside ``stop_between_trials`` and outside its ``interruptible`` parts: a stop is kept
#: as state, not raised
_held: list[bool] = []


@contextlib.contextmanager
def stop_between_trials() -> Iterator[None]:
    """A stop is not raised inside the study's own bookkeeping (Optuna creating, starting and
    storing a trial), only where ``interruptible`` says, or as the block ends: one raised while
    Optuna created a trial left it running with no worker, which no resume took back, and which
    counted towards the study's target for good (a resumed sweep ended a trial short)."""
    _held.append(True)
    try:
        yield
    finally:
        _held.pop()
    raise_if_stopped()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """A trial's own work, where a stop is raised at once (a stop already asked for first)."""
    raise_if_stopped()
    saved = _held[:]
    _held.clear()
    try:
        yield
    finally:
        _held[:] = saved


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[Stopping]:
    """SIGTERM (and Ctrl-Break on Windows) raise KeyboardInterrupt like Ctrl-C does, so the
    running trial is stopped and marked the same way. A stop is also kept as state, for
    ``raise_if_stopped`` and the session's end: Python drops a KeyboardInterrupt that its
    handler raises while a finaliser runs (a ``__del__`` or weakref callback during garbage
    collection: "Exception ignored in ..."), and the session must stop all the same."""
    stopping = Stopping()

    def interrupt(signum: int, frame: object) -> None:
        stopping.requested = True
        if not _held:
            raise KeyboardInterrupt

    def terminate(signum: int, frame: object) -> None:
        stopping.terminated = True
        interrupt(signum, frame)

    names = ("SIGTERM", "SIGBREAK") if PLATFORM == "win32" else ("SIGTERM",)
    handlers: dict[signal.Signals, Callable[[int, Any], None]] = {
        getattr(signal, n): terminate for n in names if hasattr(signal, n)
    }
    # Ctrl-C: only where Python's own handler is there (a shell's background job ignores it)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        handlers[signal.SIGINT] = interrupt
    previous = {s: signal.signal(s, h) for s, h in handlers.items()}
    _sessions.append(stopping)
    try:
        yield stopping
        if stopping.requested:  # asked to stop, yet nothing stopped: say so now
            raise KeyboardInterrupt
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _sessions[:] = [x for x in _sessions if x is not stopping]


def raise_if_stopped() -> None:
    """KeyboardInterrupt if a stop signal reached an open session of this process, whether or
    not the KeyboardInterrupt its handler raised got anywhere: called where a session waits (a
    trial's worker, the next trial), a stop is never lost."""
    if any(s.requested for s in _sessions):
        raise KeyboardInterrupt


def exit_description(exitcode: int | None) -> tuple[bool, str]:
    """(killed for good, in words) for a child's exit code: on POSIX a negative code is a
    signal, SIGKILL usually the kernel's out-of-memory killer."""
    if exitcode is not None and exitcode < 0 and PLATFORM != "win32":
        name = signal.Signals(-exitcode).name
        return name == "SIGKILL", f"died from {name}"
    return False, f"exited with code {exitcode}"


# ---- programs (llama-server, sweeps started by the service) ---------------------------------


class Program:
    """An external program started by sweeper: its output goes to a log file, it dies with
    sweeper, and it is stopped gently (SIGTERM, Ctrl-Break) before for good."""

    def __init__(
        self,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> None:
        """``stdout_pipe``: read the program's stdout (its progress) from ``process.stdout``;
        stderr still goes to the log."""
        self.argv, self.log_path, self.env, self.stdout_pipe = argv, log_path, env, stdout_pipe
        self.process: subprocess.Popen[bytes] | None = None
        self._watcher: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            kwargs: dict[str, Any] = {"stdout": out, "stderr": subprocess.STDOUT, "env": self.env}
            if self.stdout_pipe:
                kwargs |= {"stdout": subprocess.PIPE, "stderr": out}
            if sys.platform == "win32":
                kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
            elif sys.platform == "linux":
                kwargs["preexec_fn"] = _linux_death_signal
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, **kwargs)
        job = job_for(None)
        if job is not None:
            job.assign(self.process.pid)
        elif PLATFORM == "darwin":  # no death signal: a watcher ends it when sweeper is gone
            self._watcher = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sweeper.system.processes",
                    str(os.getpid()),
                    str(self.process.pid),
                ]
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_code(self, within_s: float) -> int | None:
        """The program's exit code once it has exited, waiting up to ``within_s`` for a dying
        one to finish; None while it runs (or was never started)."""
        if self.process is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(within_s)
        return self.process.returncode

    def stop(self, grace_s: float = 10.0) -> int | None:
        p = self.process
        if p is not None and p.poll() is None:
            with contextlib.suppress(OSError):
                if sys.platform == "win32":
                    p.send_signal(signal.CTRL_BREAK_EVENT)
                else:
                    p.terminate()
            try:
                p.wait(grace_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._watcher is not None:
            self._watcher.kill()
            self._watcher.wait()
        return p.returncode if p is not None else None


def run_capture(argv: list[str], timeout_s: float = 30) -> str | None:
    """A short command's output (stdout and stderr), or None when it cannot run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout + done.stderr


def _linux_death_signal() -> None:
    ctypes.CDLL("libc.so.6").prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL


def _watch_program(parent_pid: int, child_pid: int) -> None:
    """``python -m sweeper.system PARENT CHILD``: end CHILD once PARENT is gone (macOS)."""
    import psutil

    while _pid_alive(parent_pid) and _pid_alive(child_pid):
        time.sleep(0.5)
    with contextlib.suppress(psutil.Error):
        psutil.Process(child_pid).kill()


if __name__ == "__main__":
    _watch_program(int(sys.argv[1]), int(sys.argv[2]))
