"""Running a trial: load, warm up, repeat every workload, unload; in a child process or here.

``ChildProcessRunner`` does it in a fresh process (the default): a segfault, an
out-of-memory kill or a hang costs one trial with a named reason, never the sweep, and the
first-generation-in-a-process slowdown and memory figures stay per trial.
``InProcessRunner`` does the same in this process, for backends injected by tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Protocol

from sweeper import screening, system
from sweeper.backends import Backend, backend_class, create_backend
from sweeper.errors import EngineLost, FailureReason, SweeperError, TrialFailure
from sweeper.measure import Adaptive, measure_workloads, timed
from sweeper.measurement import TrialOutcome, WorkloadResult
from sweeper.memory import gpu_memory_used_mb
from sweeper.screening import Reference, ScreenPlan
from sweeper.settings import LoadSettings
from sweeper.system.neighbours import Neighbours
from sweeper.workloads import Sampling, Workload

if TYPE_CHECKING:
    from sweeper.config import StudyConfig

#: Progress callback: ("loading", fraction), ("loaded", load_s), ("run", workload name, run
#: index, Run) or ("screening",).
Progress = Callable[..., None]
log = logging.getLogger("sweeper")

_OOM_PATTERNS = re.compile(
    r"out of memory|insufficient memory|failed to allocate|cannot allocate|unable to allocate"
    r"|cudaMalloc failed|ErrorOutOfDeviceMemory|std::bad_alloc",
    re.IGNORECASE,
)


class WorkerError(SweeperError):
    """The worker hit an unexpected exception: a bug in sweeper or a backend, not a trial result.
    One line for the screen; the worker's traceback goes to the log (``traceback``)."""

    def __init__(self, traceback_text: str) -> None:
        last = traceback_text.strip().splitlines()[-1] if traceback_text.strip() else "?"
        super().__init__(
            f"internal error in the trial worker ({last[:200]}); the trial is marked FAIL and "
            "completed trials are kept; please report this with the traceback from the log"
        )
        self.traceback = traceback_text


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to measure one configuration (picklable)."""

    backend: str
    model: str
    workloads: tuple[Workload, ...]
    sampling: Sampling
    repeats: int
    warmup: int
    options: tuple[tuple[str, Any], ...] = ()
    #: Address-space cap for the worker (RLIMIT_AS), so a runaway allocation fails fast with
    #: "out of memory" instead of swapping the machine or waking the kernel's OOM killer.
    memory_limit_mb: int | None = None
    #: tokens of a warm-up run (None: the workload's own cap)
    warmup_tokens: int | None = None


@dataclass(frozen=True)
class TrialPlan:
    """What one trial measures: the workloads in full (warm-up, repeats, adaptively more near
    a front), a screening (probes at depth), or both (the baseline)."""

    full: bool = True
    adaptive: Adaptive | None = None
    screen: ScreenPlan | None = None


WORKLOADS = TrialPlan()


def worker_spec(
    config: StudyConfig, host: str | None = None, repeats: int | None = None
) -> WorkerSpec:
    """Check the backend and model (before any trial exists) and describe the workers."""
    target = config.target
    if host:
        target = dataclasses.replace(target, host=host)
    options = backend_class(config.backend).prepare(target)
    model = options.pop("model")
    return WorkerSpec(
        config.backend,
        model,
        config.workloads,
        config.sampling,
        repeats or config.measure.repeats,
        config.measure.warmup,
        tuple(options.items()),
        memory_limit_mb=config.budget.memory_limit_mb,
        warmup_tokens=config.measure.probe_tokens,
    )


class Runner(Protocol):
    """Measures one configuration and returns what was measured, or raises TrialFailure."""

    def __call__(
        self, settings: LoadSettings, progress: Progress | None = None, plan: TrialPlan = WORKLOADS
    ) -> TrialOutcome: ...


@dataclass
class InProcessRunner:
    """A trial on a backend object in this process (tests inject the fake backend)."""

    backend: Backend
    spec: WorkerSpec

    def __call__(
        self, settings: LoadSettings, progress: Progress | None = None, plan: TrialPlan = WORKLOADS
    ) -> TrialOutcome:
        return measure(self.backend, self.spec, settings, progress, plan, measures_own_memory=True)


@dataclass(frozen=True)
class ChildProcessRunner:
    """A trial in a fresh worker process, killed after ``timeout_s``."""

    spec: WorkerSpec
    timeout_s: float

    def __call__(
        self, settings: LoadSettings, progress: Progress | None = None, plan: TrialPlan = WORKLOADS
    ) -> TrialOutcome:
        return run_in_child(self.spec, settings, self.timeout_s, progress, plan)


def measure(
    backend: Backend,
    spec: WorkerSpec,
    settings: LoadSettings,
    progress: Progress | None = None,
    plan: TrialPlan = WORKLOADS,
    *,
    measures_own_memory: bool,
) -> TrialOutcome:
    on_load = (lambda fraction: progress("loading", fraction)) if progress else None
    neighbours = Neighbours() if getattr(backend, "notes_neighbours", False) else None
    applied, load_s = timed(lambda: backend.load(settings, on_load))
    if progress:
        progress("loaded", load_s)
    on_run = (lambda w, i, r: progress("run", w, i, r)) if progress else None
    gen_start = time.perf_counter()
    results = {}
    if plan.full:
        results = measure_workloads(
            backend,
            spec.workloads,
            spec.sampling,
            spec.repeats,
            spec.warmup,
            on_run,
            plan.adaptive,
            spec.warmup_tokens,
        )
    screen = None
    if plan.screen is not None:
        if progress:
            progress("screening")
        the_plan = plan.screen
        if results:  # the baseline: its own output is what the others are expected to write
            the_plan = dataclasses.replace(the_plan, references=references(results))
        elif spec.warmup:  # the first generation in a process pays one-off costs
            first = spec.workloads[0]
            backend.generate(
                dataclasses.replace(first, max_tokens=the_plan.probe_tokens), spec.sampling
            )
        screen = screening.screen(backend, spec.workloads, spec.sampling, the_plan)
    gen_s = time.perf_counter() - gen_start
    gpu_mb = gpu_memory_used_mb()
    said = backend.unload()
    if said:  # the engine's last words (llama-server: its memory breakdown per device)
        applied = applied.with_extras(on_unload=said)
    busy = neighbours.heavy() if neighbours else []
    if busy:  # a warning on the trial: they shared the CPU its numbers depend on
        applied = applied.with_extras(busy_processes=busy)
    return TrialOutcome(
        applied=applied,
        load_s=load_s,
        workloads=results,
        gen_s=gen_s,
        peak_rss_mb=system.peak_rss_mb() if measures_own_memory else None,
        gpu_mem_mb=gpu_mb,
        screen=screen,
    )


def references(results: dict[str, WorkloadResult]) -> dict[str, Reference]:
    """Each workload's measured output length and text: what depth probes are made of."""
    return {
        w: Reference(r.output_tokens.median, r.runs[0].text, r.reasoning_tokens.median)
        for w, r in results.items()
    }


def run_in_child(
    spec: WorkerSpec,
    settings: LoadSettings,
    timeout_s: float,
    progress: Progress | None = None,
    plan: TrialPlan = WORKLOADS,
) -> TrialOutcome:
    """Measure in a fresh process; raise TrialFailure with a named reason if it fails."""
    with tempfile.NamedTemporaryFile(prefix="sweeper-trial-", suffix=".log", delete=False) as f:
        log_path = f.name
    worker = system.Worker(_child_main, (spec, settings, plan, log_path), spec.memory_limit_mb)
    try:
        worker.start()
        deadline = time.monotonic() + timeout_s
        while True:
            system.raise_if_stopped()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TrialFailure("timeout", f"no result after {timeout_s:.0f} s; worker killed")
            if worker.results.poll(min(remaining, 0.5)):
                try:
                    message = worker.results.recv()
                except EOFError:
                    worker.process.join(5)
                    raise _died(worker.process.exitcode, log_path) from None
                kind = message[0]
                if kind == "done":
                    outcome: TrialOutcome = message[1]
                    if outcome.applied.extras.get("busy_processes"):
                        busy = "; ".join(outcome.applied.extras["busy_processes"])
                        log.warning("busy outside sweeper during this trial: %s", busy)
                    return outcome
                if kind == "failure":
                    if message[1] == FailureReason.ENGINE_LOST:
                        raise EngineLost(message[2])
                    raise TrialFailure(*_classify(message[1], message[2], log_path))
                if kind == "error":
                    log.info("trial worker traceback (a bug: please report it):\n%s", message[1])
                    raise WorkerError(message[1])
                if progress:
                    progress(*message)
            elif not worker.process.is_alive():
                raise _died(worker.process.exitcode, log_path)
    finally:
        worker.stop()
        with contextlib.suppress(OSError):
            os.unlink(log_path)


def _child_main(
    conn: Connection, spec: WorkerSpec, settings: LoadSettings, plan: TrialPlan, log_path: str
) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 2)  # llama.cpp logs to stderr; kept to name failures, not shown
    os.close(fd)
    try:
        cls = backend_class(spec.backend)
        options = {**cls.worker_options, **dict(spec.options)}
        with create_backend(spec.backend, model=spec.model, **options) as backend:
            outcome = measure(
                backend,
                spec,
                settings,
                lambda *m: conn.send(m),
                plan,
                measures_own_memory=cls.measures_own_memory,
            )
        conn.send(("done", outcome))
    except TrialFailure as exc:
        conn.send(("failure", exc.reason, exc.detail))
    except Exception:  # a bug, not a property of the settings: stop the sweep, loudly
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _classify(reason: str, detail: str, log_path: str) -> tuple[str, str]:
    """A load or generation failure whose log says it ran out of memory is ``oom``."""
    if reason in ("load_failed", "generation_failed", "crashed"):
        line = _oom_line(log_path)
        if line:
            return "oom", f"{detail} ({line})"
    return reason, detail


def _died(exitcode: int | None, log_path: str) -> TrialFailure:
    line = _oom_line(log_path)
    killed, how = system.exit_description(exitcode)
    if killed:
        return TrialFailure(
            "oom",
            "worker killed by SIGKILL, most likely by the kernel's out-of-memory killer"
            + (f" ({line})" if line else ""),
        )
    if line:
        return TrialFailure("oom", f"worker {how} ({line})")
    return TrialFailure("crashed", f"worker {how}{_tail(log_path)}")


def _oom_line(log_path: str) -> str | None:
    for line in reversed(_read(log_path).splitlines()):
        if _OOM_PATTERNS.search(line):
            return line.strip()[:200]
    return None


def _tail(log_path: str) -> str:
    lines = [ln.strip() for ln in _read(log_path).splitlines() if ln.strip()]
    return f"; last log line: {lines[-1][:200]}" if lines else ""


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()[-65536:]
    except OSError:
        return ""
