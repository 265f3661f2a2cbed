"""The operating system module: every platform's branch, with its system calls recorded where
the platform is not this one (CI runs Linux), and for real where it is."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import worker_targets

from sweeper import system
from sweeper.system import windows


class RecordingKernel32:
    """Stands in for Windows' kernel32: records every call, succeeds."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.limits: windows._ExtendedLimits | None = None

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any) -> int:
            self.calls.append((name, args))
            if name == "SetInformationJobObject":
                self.limits = ctypes.cast(args[2], ctypes.POINTER(windows._ExtendedLimits)).contents
            return 1234 if name in ("CreateJobObjectW", "OpenProcess") else 1

        return call


def test_windows_children_join_a_kill_on_close_job_with_the_memory_cap() -> None:
    k = RecordingKernel32()
    job = system.Job(k, memory_limit_mb=2048)
    job.assign(4242)
    names = [name for name, _ in k.calls]
    assert names == [
        "CreateJobObjectW",
        "SetInformationJobObject",
        "OpenProcess",
        "AssignProcessToJobObject",
        "CloseHandle",
    ]
    assert k.calls[1][1][1] == windows.JOB_OBJECT_EXTENDED_LIMIT_INFORMATION
    assert k.limits is not None
    flags = k.limits.BasicLimitInformation.LimitFlags
    assert flags & windows.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    assert flags & windows.JOB_OBJECT_LIMIT_PROCESS_MEMORY
    assert k.limits.ProcessMemoryLimit == 2048 * 2**20
    assert k.calls[2][1][2] == 4242 and k.calls[3][1] == (1234, 1234)


def test_a_windows_job_without_a_cap_only_kills_on_close() -> None:
    k = RecordingKernel32()
    system.Job(k)
    assert k.limits is not None
    assert k.limits.BasicLimitInformation.LimitFlags == windows.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE


def test_the_watchdog_exits_when_the_parent_goes() -> None:
    alive = iter([True, True, False])
    exits: list[int] = []
    thread = system.watch_parent(1, alive=lambda pid: next(alive), exit=exits.append, interval_s=0)
    thread.join(5)
    assert exits == [1]


def test_peak_memory_units() -> None:
    assert system.maxrss_mb(2048, "linux") == 2.0  # KiB
    assert system.maxrss_mb(2 * 2**20, "darwin") == 2.0  # bytes
    assert system.peak_rss_mb() is not None and system.peak_rss_mb() > 1


def test_the_memory_cap_is_said_to_be_unenforced_on_macos() -> None:
    assert system.cap_memory(1024, "darwin") == "memory_limit_mb is not enforced on macOS"


def test_lmstudio_home_follows_the_pointer_file(tmp_path: Path) -> None:
    assert system.lmstudio_home(tmp_path) == tmp_path / ".lmstudio"
    (tmp_path / ".lmstudio-home-pointer").write_text(str(tmp_path / "elsewhere") + "\n")
    assert system.lmstudio_home(tmp_path) == tmp_path / "elsewhere"


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def _orphan_of_killed_parent(child_code: str) -> int:
    """A parent starts a child running ``child_code`` and is killed with SIGKILL; returns the
    child's pid."""
    parent_code = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {child_code!r}])
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    return _pid_after_its_parent_is_killed(parent_code, 1.5)  # the child is up and watching


def _pid_after_its_parent_is_killed(parent_code: str, settle_s: float) -> int:
    """Runs ``parent_code``, which prints a pid, waits ``settle_s``, then kills the parent with
    SIGKILL; returns the pid it printed."""
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    with parent.stdout:
        pid = int(parent.stdout.readline())
    time.sleep(settle_s)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    return pid


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process tree")
def test_the_macos_watchdog_ends_an_orphan_for_real() -> None:
    """The branch macOS uses (a watchdog thread), run here on a real process tree."""
    child = _orphan_of_killed_parent(
        "import os, time\nfrom sweeper import system\n"
        "system.watch_parent(os.getppid())\ntime.sleep(60)"
    )
    assert _gone(child, 5)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process tree")
def test_without_a_watchdog_the_orphan_would_live_on() -> None:
    """The control for the test above: the same tree with no watchdog leaves an orphan."""
    child = _orphan_of_killed_parent("import time\ntime.sleep(60)")
    try:
        assert not _gone(child, 2)
    finally:
        os.kill(child, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's death signal")
def test_a_program_dies_with_sweeper_on_linux(tmp_path: Path) -> None:
    child_code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from sweeper import system
        p = system.Program(["{sys.executable}", "-c", "import time; time.sleep(60)"],
                           Path({str(tmp_path / "p.log")!r}))
        p.start()
        print(p.process.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", child_code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    with parent.stdout:
        program = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert _gone(program, 5)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process tree (Windows: the job)")
def test_a_worker_dies_with_sweeper_killed() -> None:
    """A trial's worker (on Linux forked by a fork server, sweeper's child) does not outlive a
    kill -9 of sweeper: nothing goes on generating, holding the model, after its sweep."""
    parent_code = textwrap.dedent("""
        import time, worker_targets
        from sweeper import system
        w = system.Worker(worker_targets.say_pid_and_wait, ())
        w.start()
        print(w.results.recv()[0], flush=True)
        time.sleep(60)
    """)
    worker = _pid_after_its_parent_is_killed(parent_code, 0.5)
    assert _gone(worker, 5)


def test_a_worker_sees_the_environment_sweeper_has_when_it_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As a spawned interpreter does, also where workers fork from a server started earlier."""
    seen = []
    for value in ("first", "second"):
        monkeypatch.setenv("SWEEPER_TEST_VALUE", value)
        worker = system.Worker(worker_targets.say_environment, ("SWEEPER_TEST_VALUE",))
        worker.start()
        assert worker.results.poll(30)
        seen.append(worker.results.recv()[0])
        worker.stop()
    assert seen == ["first", "second"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")
def test_a_worker_unwinds_when_its_whole_process_group_is_terminated(tmp_path: Path) -> None:
    """systemd and ``timeout`` send SIGTERM to every process of the group: the worker unwinds
    (a backend unloads its model) and sweeper waits for it; nothing kills it half-way (on
    Linux its fork server, ended by that SIGTERM, would: the worker's death signal)."""
    marker = tmp_path / "unwound"
    parent_code = textwrap.dedent(f"""
        import signal, sys, time, worker_targets
        from sweeper import system
        w = system.Worker(worker_targets.unwind_slowly, ({str(marker)!r},))
        def stop(signum, frame):
            w.stop(grace_s=30)
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        w.start()
        print(w.results.recv()[0], flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert parent.stdout is not None
    with parent.stdout:
        assert parent.stdout.readline().strip() == "started"
    os.killpg(parent.pid, signal.SIGTERM)
    assert parent.wait(timeout=60) == 0
    assert marker.exists(), "the worker was killed before it unwound"


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX worker's start")
def test_a_python_file_in_the_working_directory_does_not_replace_a_workers_module(
    tmp_path: Path,
) -> None:
    """Users run sweeper in their study's folder, which may hold any Python file: a module of
    that name is not imported in place of the worker's (here its target's module; a
    ``random.py`` would do the same to the standard library's)."""
    folder = tmp_path / "studies"
    folder.mkdir()
    (folder / "worker_targets.py").write_text("raise SystemExit('the working directory')\n")
    script = tmp_path / "bin" / "parent.py"  # run as a script, as the `sweeper` command is
    script.parent.mkdir()
    script.write_text(
        textwrap.dedent("""
            import worker_targets
            from sweeper import system
            if __name__ == "__main__":
                w = system.Worker(worker_targets.say_environment, ("SWEEPER_HOME",))
                w.start()
                assert w.results.poll(30), "no word from the worker"
                print(w.results.recv()[0] is not None)
                w.stop()
        """)
    )
    done = subprocess.run(
        [sys.executable, str(script)], cwd=folder, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_a_program_is_stopped_gently_then_for_good(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    p = system.Program([sys.executable, "-c", "import time; time.sleep(60)"], log)
    p.start()
    assert p.alive()
    assert p.stop(grace_s=5) is not None and not p.alive()


def test_a_worker_is_stopped_by_a_message_and_unwinds() -> None:
    worker = system.Worker(worker_targets.loop_until_stopped, ())
    worker.start()
    assert worker.results.poll(30) and worker.results.recv() == ("started",)
    results = worker.results
    got: list[tuple[str, ...]] = []
    orig_close = results.close

    def drain_then_close() -> None:  # read what the worker said on its way out
        with contextlib.suppress(EOFError):
            while results.poll(0.5):
                got.append(results.recv())
        orig_close()

    results.close = drain_then_close  # type: ignore[method-assign]
    start = time.monotonic()
    worker.stop(grace_s=30)
    # the message did it, not the terminate() that follows the grace period (on Windows that
    # would be TerminateProcess: no unwinding, no unload)
    assert time.monotonic() - start < 20
    assert got == [("unwound",)]
    assert worker.process.exitcode == 128 + signal.SIGTERM  # it exited, it was not killed
