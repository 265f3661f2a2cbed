"""The sweep: an Optuna multi-objective study over load settings (objectives.py), run as
parts: what is queued before sampling (the baseline first, retries, a small space in full),
one trial (objective.py), what follows each trial (a baseline re-run when due, the deadline),
and the screening's finalists promoted to a full measurement."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from sweeper import fingerprint, outage, records, schedule, storage, system
from sweeper.backends import backend_class
from sweeper.config import StudyConfig
from sweeper.objective import Objective
from sweeper.records import Tag, TrialRecord
from sweeper.runner import Progress, Runner, worker_spec

log = logging.getLogger("sweeper")

_FINISHED = (TrialState.COMPLETE, TrialState.FAIL)
Callback = Callable[[optuna.Study, FrozenTrial], None]


class Sweep:
    """Runs a study file's sweep: enqueues (the baseline, retries, a space small enough to
    enumerate), optimises, and promotes the screening's finalists; resumable. Every
    collaborator is given here; one trial is ``objective``'s."""

    def __init__(
        self,
        config: StudyConfig,
        runner: Runner,
        storage_url: str | None = None,
        machine: dict[str, Any] | None = None,
        progress: Progress | None = None,
        *,
        round_runner: Runner | None = None,
        on_stage: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime.datetime] = datetime.datetime.now,
        worker: str | None = None,
    ):
        self.config = config
        self.storage_url = storage_url
        self.machine = machine or {}
        #: measures one configuration per confirmation round (every workload once)
        self.round_runner: Runner = round_runner or runner
        #: told when a stage starts: ("screening" | "measuring" | "full measurement", trials)
        self.on_stage = on_stage
        self.clock, self.now = clock, now
        worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.objective = Objective(config, runner, worker, self.machine, progress)

    def watched(self, progress: Progress, on_stage: Callable[[str, int], None]) -> Sweep:
        """This sweep, told what each trial does and when a stage starts."""
        return Sweep(
            self.config,
            self.objective.runner,
            self.storage_url,
            self.machine,
            progress,
            round_runner=self.round_runner,
            on_stage=on_stage,
            clock=self.clock,
            now=self.now,
            worker=self.objective.worker,
        )

    def open(self) -> optuna.Study:
        return storage.open_study(self.config, self.storage_url, create=True)

    def run(
        self,
        study: optuna.Study,
        trials: int | None = None,
        timeout_s: float | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> int:
        """Stage 1: run until the study holds ``trials`` complete trials, each screened (or,
        without screening, measured in full), leaving time for stage 2 within ``timeout_s``.
        Stage 2 (screening): the finalists measured in full. Returns how many trials ran.
        A stop is raised only inside a trial's measurement (``Objective``) or as this ends."""
        with system.stop_between_trials():
            return self._run(study, trials, timeout_s, callbacks)

    def _run(
        self,
        study: optuna.Study,
        trials: int | None,
        timeout_s: float | None,
        callbacks: Sequence[Callback],
    ) -> int:
        target = trials or self.config.budget.trials
        before = len(study.get_trials(deepcopy=False, states=_FINISHED))
        recs = enqueue_start(study, self.config)
        promoted = sum(r.tag == Tag.PROMOTED and r.state == TrialState.COMPLETE for r in recs)
        done = sum(r.state == TrialState.COMPLETE for r in recs) - promoted
        screening = self.config.measure.screening
        if done < target:
            # a resumed run must not replay the first run's random start-up proposals
            study.sampler = schedule.sampler(self.config.sampler_seed + len(recs), target)
            todo = target - done
            grid = enqueue_grid(study, self.config, recs, target)
            if grid is not None:  # a space small enough to enumerate: every configuration once
                todo = min(todo, grid)
            self._stage("screening" if screening else "measuring", todo)
            start = self.clock()
            study.optimize(
                lambda trial: self.objective(trial, limit=target + promoted),
                n_trials=todo,
                # running trials count too: other workers' may make a new one unneeded
                callbacks=[
                    MaxTrialsCallback(
                        target + promoted, states=(TrialState.COMPLETE, TrialState.RUNNING)
                    ),
                    self._after_trial(start, timeout_s),
                    *callbacks,
                ],
            )
        if screening:
            finalists = promote(study, self.config)
            if finalists:
                self._stage("full measurement", finalists)
                study.optimize(self.objective, n_trials=finalists, callbacks=list(callbacks))
        return len(study.get_trials(deepcopy=False, states=_FINISHED)) - before

    def _stage(self, name: str, trials: int) -> None:
        if self.on_stage:
            self.on_stage(name, trials)

    def _after_trial(self, start: float, timeout_s: float | None) -> Callback:
        """After each trial, from its own snapshot: stop sampling when only the reserve for the
        finalists and the confirmation is left; else re-run the baseline when due (if it moved,
        the machine changed under the sweep)."""

        def after(study: optuna.Study, trial: FrozenTrial) -> None:
            recs = self.objective.after(trial)
            # the reserve is priced only under a deadline (pricing it ranks the screening's
            # front); once met, no drift check: it would run with the finalists, in time kept
            # for them (the confirmation measures the baseline beside them anyway)
            if (
                timeout_s is not None
                and self.clock() - start + schedule.reserve_s(self.config, recs) >= timeout_s
            ):
                study.stop()
                return
            params = schedule.drift_check_due(recs, self.config.measure, self.now())
            if params is not None:
                records.enqueue(study, params, Tag.DRIFT_CHECK)

        return after


def enqueue_start(study: optuna.Study, config: StudyConfig) -> list[TrialRecord]:
    """Queue the baseline when it is not measured yet, and once more every trial that was
    interrupted, cut off by a lost engine, or killed here; the stored trials after it."""
    recs = records.load(study)
    params = schedule.baseline_params(config, recs)
    if params is not None:
        records.enqueue(study, params, Tag.BASELINE)
    for r in schedule.orphans(records.load(study), socket.gethostname(), system.process_alive):
        log.warning("trial %d: the process that ran it (%s) is gone", r.number, r.worker)
        records.killed(study, r.number)
    for r in schedule.retries(records.load(study)):
        records.enqueue(study, r.params, r.tag, retry_of=r.number)
    return records.load(study)


def enqueue_grid(
    study: optuna.Study, config: StudyConfig, recs: Sequence[TrialRecord], target: int
) -> int | None:
    """When every configuration fits the budget, queue each one not yet queued or measured
    (instead of sampling, which would propose some twice and miss others); returns how many
    trials wait, or None for a space to sample."""
    size = config.space.size()
    if size is None or size >= target:
        return None
    known = [r.params for r in recs]
    for params in config.space.grid():
        if params not in known:
            records.enqueue(study, params)
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def promote(study: optuna.Study, config: StudyConfig) -> int:
    """Queue the screening's finalists for a full measurement; how many trials wait."""
    for r in schedule.finalists(config, records.load(study)):
        records.enqueue(study, r.params, Tag.PROMOTED, promoted_from=r.number)
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def prepare(
    config: StudyConfig,
    storage_url: str | None = None,
    host: str | None = None,
    allow_mixed_hardware: bool = False,
    engine_wait_s: float | None = None,
) -> tuple[Sweep, optuna.Study]:
    """Everything a sweep needs before its first trial, each check failing with one line:
    the backend and model, the storage, the study's identity and the machine."""
    spec = worker_spec(config, host)
    engine = backend_class(config.backend).engine_version(dict(spec.options))
    machine = fingerprint.machine(config.backend, spec.model, engine)
    # a trial cut off by an engine that went away waits up to engine_wait_s for it, then reruns
    runner, rounds = outage.runners(spec, config.budget.trial_timeout_s, engine, engine_wait_s)
    sweep = Sweep(config, runner, storage_url, machine, round_runner=rounds)
    study = sweep.open()
    storage.check_machine(study, machine, allow_mixed_hardware)
    return sweep, study


@contextlib.contextmanager
def session(config: StudyConfig) -> Iterator[system.Stopping]:
    """A sweep's surroundings: every trial's settings, applied config, measurements and
    failures appended to ``<name>.log`` next to the study file, for the morning after; the
    machine kept awake; and termination taken as Ctrl-C, so the running trial is stopped and
    marked the same way."""
    handler = logging.FileHandler(config.base_dir / f"{config.name}.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(message)s"))
    handler.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        with system.keep_awake(), system.terminate_as_interrupt() as stopping:
            yield stopping
    finally:
        log.removeHandler(handler)
        handler.close()
