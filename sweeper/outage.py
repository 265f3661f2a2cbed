"""Riding out an engine that goes away: LM Studio quit, crashed, restarted or updated while a
sweep, a confirmation or a comparison measures through it.

A trial cut off because the engine went away (``EngineLost``) says nothing about its settings:
``Riding`` waits for the engine, visibly and for a bounded time, reads its version again and
measures the same configuration again (a bounded number of times). Past the wait, or with
another engine back, it stops with ``EngineAway``: one line, every completed trial kept, and
the same command resumes.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sweeper import system
from sweeper.backends import backend_class
from sweeper.errors import EngineAway, EngineLost, FailureReason, TrialFailure
from sweeper.measurement import TrialOutcome
from sweeper.runner import WORKLOADS, ChildProcessRunner, Progress, Runner, TrialPlan, WorkerSpec
from sweeper.settings import LoadSettings

log = logging.getLogger("sweeper")

#: How long a sweep waits for its engine by default (an update and restart take minutes).
WAIT_S = 15 * 60.0
#: Times one configuration is measured again after losing its engine: a configuration that
#: takes the engine down every time is infeasible (LM Studio crashing on a load too large).
RETRIES = 3
POLL_S = 1.0
NAMES = {"lmstudio": "LM Studio"}


@dataclass
class Watch:
    """The engine a sweep measures: how to see it is back and which version it was."""

    backend: str
    options: dict[str, Any]
    engine: str | None
    wait_s: float = WAIT_S
    #: when the engine was last seen gone, for the progress line ("since 03:12")
    since: datetime.datetime | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return NAMES.get(self.backend, self.backend)

    def wait(self, why: str, progress: Progress | None = None) -> None:
        """Block until the engine answers again (or raise ``EngineAway``), then check it is
        the same engine."""
        cls = backend_class(self.backend)
        self.since = datetime.datetime.now()
        since = self.since.strftime("%H:%M")
        log.warning(
            "waiting for %s since %s (up to %s): %s", self.name, since, _minutes(self.wait_s), why
        )
        if progress:
            progress("waiting", self.name, since)
        deadline = time.monotonic() + self.wait_s
        while not cls.engine_reachable(self.options):
            system.raise_if_stopped()
            if time.monotonic() >= deadline:
                raise EngineAway(
                    f"{self.name} did not come back within {_minutes(self.wait_s)} (waiting "
                    f"since {since}; {why}); start {self.name} again"
                )  # what is kept, and how to go on, is the caller's: a sweep's, a comparison's
            time.sleep(POLL_S)
        now = cls.engine_version(self.options)
        if self.engine is not None and now is not None and now != self.engine:
            raise EngineAway(
                f"{self.name} came back as another engine ({self.engine} before, {now} now): "
                "a study measures one engine"
            )
        log.warning("%s is back (waited since %s); measuring again", self.name, since)
        if progress:
            progress("engine back", self.name, since)
        self.since = None


@dataclass
class Riding:
    """A runner that rides out its engine going away (see the module's docstring)."""

    inner: Runner
    watch: Watch
    retries: int = RETRIES

    def __call__(
        self, settings: LoadSettings, progress: Progress | None = None, plan: TrialPlan = WORKLOADS
    ) -> TrialOutcome:
        for attempt in range(self.retries + 1):
            try:
                return self.inner(settings, progress, plan)
            except EngineLost as exc:
                if attempt == self.retries:
                    raise TrialFailure(
                        FailureReason.CRASHED,
                        f"{self.watch.name} went away each of the {self.retries + 1} times this "
                        f"configuration was measured (last: {exc.detail})",
                    ) from exc
                self.watch.wait(exc.detail, progress)
        raise AssertionError("unreachable")


def runners(
    spec: WorkerSpec, timeout_s: float, engine: str | None, wait_s: float | None = None
) -> tuple[Riding, Riding]:
    """A sweep's trial runner and its confirmation rounds' (one run of each workload), both
    riding out the engine of ``spec`` (as found before the first trial) with one watch."""
    watch = Watch(spec.backend, dict(spec.options), engine, WAIT_S if wait_s is None else wait_s)
    rounds = dataclasses.replace(spec, repeats=1)
    return (
        Riding(ChildProcessRunner(spec, timeout_s), watch),
        Riding(ChildProcessRunner(rounds, timeout_s), watch),
    )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
