"""Trials in worker processes: every way a worker can fail becomes a named reason."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

from sweeper import system
from sweeper.errors import TrialFailure
from sweeper.runner import WorkerError, WorkerSpec, run_in_child
from sweeper.settings import LoadSettings
from sweeper.workloads import Sampling, Workload

WORKLOADS = (Workload("w", "hello", 4),)


def spec(model: str) -> WorkerSpec:
    return WorkerSpec("fake", model, WORKLOADS, Sampling(), repeats=2, warmup=1)


def test_a_result_comes_back_with_progress() -> None:
    events = []
    outcome = run_in_child(
        spec("fake"), LoadSettings(cpu_threads=2), 60, lambda *e: events.append(e[:3])
    )
    assert outcome.applied.stored() == {"model": "fake", "cpu_threads": 2}
    assert len(outcome.workloads["w"].runs) == 2
    assert len(outcome.workloads["w"].warmup) == 1
    assert outcome.peak_rss_mb and outcome.peak_rss_mb > 1
    assert [e[0] for e in events] == ["loaded", "run", "run", "run"]
    assert [e[2] for e in events[1:]] == [-1, 0, 1]


@pytest.mark.parametrize(
    ("model", "reason", "detail"),
    [
        ("fake:segfault", "crashed", "worker died from SIGSEGV"),
        ("fake:sigkill", "oom", "killed by SIGKILL, most likely by the kernel's out-of-memory"),
    ],
)
def test_a_dying_worker_is_a_named_failure(model: str, reason: str, detail: str) -> None:
    with pytest.raises(TrialFailure) as err:
        run_in_child(spec(model), LoadSettings(), 60)
    assert err.value.reason == reason
    assert detail in err.value.detail


def test_a_hanging_worker_times_out() -> None:
    with pytest.raises(TrialFailure) as err:
        run_in_child(spec("fake:hang"), LoadSettings(), 2)
    assert err.value.reason == "timeout"
    assert err.value.detail == "no result after 2 s; worker killed"


def test_a_load_failure_keeps_its_reason() -> None:
    with pytest.raises(TrialFailure) as err:
        run_in_child(spec("fake"), LoadSettings(context_length=1_000_000), 60)
    assert err.value.reason == "oom"


def test_a_bug_is_not_hidden_as_a_trial_result() -> None:
    with pytest.raises(WorkerError, match="ZeroDivisionError: a bug in a backend"):
        run_in_child(spec("fake:bug"), LoadSettings(), 60)


def test_a_ctrl_c_that_python_dropped_still_stops_the_trial(
    drop_ctrl_c: Callable[[], list[object]],
) -> None:
    with pytest.raises(KeyboardInterrupt), system.terminate_as_interrupt() as stopping:
        assert drop_ctrl_c() == [KeyboardInterrupt]  # none reached this code
        with pytest.raises(KeyboardInterrupt):  # the worker is stopped, not waited for
            run_in_child(spec("fake:hang"), LoadSettings(), 10)
    assert stopping.requested and not stopping.terminated
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    system.raise_if_stopped()  # the session is over: a later one starts afresh


def test_a_session_asked_to_stop_does_not_end_as_if_finished(
    drop_ctrl_c: Callable[[], list[object]],
) -> None:
    """A Ctrl-C dropped after the last check (the last trial's result being stored) is raised
    when the session ends, so `sweeper run` does not go on to its confirmation and exit 0."""
    with pytest.raises(KeyboardInterrupt), system.terminate_as_interrupt():
        assert drop_ctrl_c() == [KeyboardInterrupt]


def test_a_worker_starts_without_the_report_and_statistics_libraries() -> None:
    """A trial's worker is a spawned interpreter: it imports the `sweeper` script's module (the
    CLI) and the runner before it measures. scipy, pandas and plotly (a comparison's t
    interval, the tables, the report) are not needed there and were most of its start-up
    (benchmarks/startup.py)."""
    code = "import sys, sweeper.cli, sweeper.runner; print(sorted(set(sys.modules) & HEAVY))"
    code = code.replace("HEAVY", repr({"scipy", "pandas", "plotly"}))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
