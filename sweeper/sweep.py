"""The sweep: an Optuna multi-objective study over load settings, the trial objective and the
schedule (baseline first, retries, drift checks).

Objectives, per workload: maximize decode tok/s and minimize time to first token (medians of
the repeats). Constraints (feasible when <= 0), set on every trial:
- ``failed``: the trial could not be measured (its reason is stored as ``failure_reason``);
- ``truncated:<workload>``: output below ``min_output_ratio`` x the baseline's without hitting
  the token cap, so a "faster" run is not merely a shorter one;
- ``diverged:<workload>``: output differing from the baseline's before ``min_prefix_chars``.
Infeasible trials are COMPLETE with dominated placeholder values (0 tok/s, 3600 s), never FAIL:
the sampler learns to avoid them; a FAIL is an interrupted trial or one whose engine was lost."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from sweeper import fingerprint, guards, outage, records, schedule, storage, studyrecord, system
from sweeper.backends import backend_class
from sweeper.config import StudyConfig
from sweeper.errors import EngineAway, FailureReason, TrialFailure
from sweeper.fronts import pareto_front, points
from sweeper.measure import Adaptive
from sweeper.measurement import TrialOutcome, WorkloadResult
from sweeper.records import FULL, SCREEN, StoredWorkload, Tag
from sweeper.runner import Progress, Runner, TrialPlan, worker_spec
from sweeper.screening import Reference, ScreenPlan
from sweeper.settings import LoadSettings, invalid_combination, same_value

log = logging.getLogger("sweeper")

_FINISHED = (TrialState.COMPLETE, TrialState.FAIL)
WORST_TOK_S = 0.0
WORST_TTFT_S = 3600.0
Callback = Callable[[optuna.Study, FrozenTrial], None]


class Sweep:
    """Runs a study file's sweep: baseline first, then sampled trials, resumable."""

    def __init__(
        self,
        config: StudyConfig,
        runner: Runner,
        storage_url: str | None = None,
        machine: dict[str, Any] | None = None,
        progress: Progress | None = None,
    ):
        self.config = config
        self.runner = runner
        self.storage_url = storage_url
        self.machine = machine or {}
        self.progress = progress
        #: measures one configuration per confirmation round (every workload once)
        self.round_runner: Runner = runner
        #: told when a stage starts: ("screening" | "measuring" | "full measurement", trials)
        self.on_stage: Callable[[str, int], None] | None = None

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
        Stage 2 (screening): the finalists measured in full. Returns how many trials ran."""
        target = trials or self.config.budget.trials
        before = len(study.get_trials(deepcopy=False, states=_FINISHED))
        self._enqueue_baseline(study)
        self._enqueue_retries(study)
        recs = records.load(study)
        promoted = sum(r.tag == Tag.FULL and r.state == TrialState.COMPLETE for r in recs)
        done = sum(r.state == TrialState.COMPLETE for r in recs) - promoted
        screening = self.config.measure.screening
        if done < target:
            study.sampler = self._sampler(study, target)
            todo = target - done
            grid = self._enumerate(study, target)
            if grid is not None:  # a space small enough to enumerate: every configuration once
                todo = min(todo, grid)
            if self.on_stage:
                self.on_stage("screening" if screening else "measuring", todo)
            start = time.monotonic()
            study.optimize(
                lambda trial: self.objective(trial, limit=target + promoted),
                n_trials=todo,
                # running trials count too: other workers' may make a new one unneeded
                callbacks=[
                    MaxTrialsCallback(
                        target + promoted, states=(TrialState.COMPLETE, TrialState.RUNNING)
                    ),
                    self._enqueue_drift_check,
                    self._deadline(start, timeout_s),
                    *callbacks,
                ],
            )
        if screening:
            finalists = self._promote(study)
            if finalists:
                if self.on_stage:
                    self.on_stage("full measurement", finalists)
                study.optimize(self.objective, n_trials=finalists, callbacks=list(callbacks))
        return len(study.get_trials(deepcopy=False, states=_FINISHED)) - before

    def _deadline(self, start: float, timeout_s: float | None) -> Callback:
        """Stop sampling when only the reserve for the finalists and the confirmation is left."""

        def check(study: optuna.Study, trial: FrozenTrial) -> None:
            reserve = schedule.reserve_s(self.config, records.load(study))
            if timeout_s is not None and time.monotonic() - start + reserve >= timeout_s:
                study.stop()

        return check

    def _promote(self, study: optuna.Study) -> int:
        """Queue the screening's finalists for a full measurement; how many trials wait."""
        for r in schedule.finalists(self.config, records.load(study)):
            records.enqueue(study, r.params, Tag.FULL, promoted_from=r.number)
        return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def _enumerate(self, study: optuna.Study, target: int) -> int | None:
        """When every configuration fits the budget, queue each one not yet queued or measured
        (instead of sampling, which would propose some twice and miss others); returns how
        many trials wait, or None for a space to sample."""
        space = self.config.space
        size = space.size()
        if size is None or size >= target:
            return None
        recs = records.load(study)
        known = [r.params for r in recs]
        for params in space.grid():
            if params not in known:
                records.enqueue(study, params)
        return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def _sampler(self, study: optuna.Study, target: int) -> optuna.samplers.BaseSampler:
        # A resumed run must not replay the first run's random start-up proposals: the seed
        # moves on with the number of trials already stored.
        seed = self.config.sampler_seed + len(study.get_trials(deepcopy=False))
        return schedule.sampler(seed, target)

    def _enqueue_baseline(self, study: optuna.Study) -> None:
        params = schedule.baseline_params(self.config, records.load(study))
        if params is not None:
            records.enqueue(study, params, Tag.BASELINE)

    def _adaptive(self, study: optuna.Study) -> Adaptive | None:
        """Extra repeats for trials near a workload's current front (see measure.Adaptive)."""
        m = self.config.measure
        if m.repeat_cap <= m.repeats:
            return None
        recs = records.load(study)
        fronts = {
            w.name: [(p.tok_s.median, p.first_s.median) for p in pareto_front(points(recs, w.name))]
            for w in self.config.workloads
        }
        return Adaptive(m.repeat_cap, m.target_ci, fronts)

    def _enqueue_drift_check(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Re-run the baseline every so often: if it moved, the machine changed under the
        sweep (heat, background load, another app on the GPU)."""
        params = schedule.recheck_due(
            records.load(study), self.config.measure, datetime.datetime.now()
        )
        if params is not None:
            records.enqueue(study, params, Tag.BASELINE_CHECK)

    def _check_drift(self, trial: optuna.Trial, outcome: TrialOutcome) -> None:
        recs = records.load(trial.study)
        base = records.baseline(recs)
        if base is None:
            return
        moved = schedule.drift(base, outcome)
        records.drift(trial, moved)
        if not moved:
            return
        checks = [r.number for r in recs if r.is_anchor and r.number < trial.number]
        since = max(checks) if checks else 0
        event = {"check_trial": trial.number, "since_trial": since, "tok_s_change_pct": moved}
        studyrecord.add_drift_event(trial.study, event)
        log.warning(
            "drift: the baseline re-run (trial %d) moved %s; trials %d-%d may be affected",
            trial.number,
            ", ".join(f"{w} {v[0]:+.1f}% tok/s" for w, v in moved.items()),
            since + 1,
            trial.number - 1,
        )

    def _enqueue_retries(self, study: optuna.Study) -> None:
        """Trials interrupted, cut off by a lost engine, or killed here run again, once."""
        recs = records.load(study)
        for r in schedule.orphans(recs, socket.gethostname(), system.process_alive):
            log.warning("trial %d: the process that ran it (%s) is gone", r.number, r.worker)
            records.killed(study, r.number)
        for r in schedule.retries(records.load(study)):
            records.enqueue(study, r.params, r.tag, retry_of=r.number)

    def objective(self, trial: optuna.Trial, limit: int | None = None) -> list[float]:
        try:
            return self._objective(trial, limit)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: marked so that the next run retries it
            records.interrupted(trial)
            raise
        except EngineAway:  # the engine did not come back: the next run retries it too
            records.engine_lost(trial)
            raise

    def _objective(self, trial: optuna.Trial, limit: int | None) -> list[float]:
        system.raise_if_stopped()
        cfg = self.config
        tag = records.tag_of(trial)
        is_anchor = tag in (Tag.BASELINE, Tag.BASELINE_CHECK)
        recs = records.load(trial.study)
        if limit is not None and schedule.surplus(recs, trial.number, limit):
            trial.study.stop()
            raise optuna.TrialPruned("the study reached its trial target as this trial began")
        if tag == Tag.BASELINE and schedule.earlier_baseline(recs, trial.number):
            # Two workers starting together may both enqueue the baseline: the second run
            # of it is kept as a repeat measurement, under its own tag.
            records.set_tag(trial, Tag.BASELINE_REPEAT)
        settings = cfg.space.suggest(trial, cfg.baseline if is_anchor else None)
        if is_anchor:  # what the first baseline left to the engine is sent explicitly now
            settings = settings.replace(**schedule.pinned_baseline(recs))
        records.start(trial, settings, f"{socket.gethostname()}:{os.getpid()}", self.machine)
        log.info("trial %d start: %s", trial.number, json.dumps(settings.to_dict()))
        start = time.perf_counter()
        why = invalid_combination(settings)
        if why:
            return self._infeasible(trial, FailureReason.INVALID_COMBINATION, why)
        screening = cfg.measure.screening
        full = not screening or tag is not None  # the baseline, its re-runs, the finalists
        fidelity = FULL if full else SCREEN
        if tag is None and records.retry_of(trial) is None:
            source = schedule.measured_before(recs, trial.number, settings, fidelity)
            if source is not None and source.values is not None:
                log.info("trial %d: measured as trial %d already", trial.number, source.number)
                records.duplicate(trial, source)
                return list(source.values)
        records.fidelity(trial, fidelity)
        the_plan = TrialPlan(
            full=full,
            adaptive=self._adaptive(trial.study) if full else None,
            # the baseline's re-runs are screened too: how far apart two screenings of one
            # configuration are sets how close to the best a finalist must be
            screen=self._screen_plan(trial.study) if screening and tag != Tag.FULL else None,
        )
        try:
            outcome = self.runner(settings, self.progress, the_plan)
        except TrialFailure as exc:
            return self._infeasible(
                trial, exc.reason, exc.detail, wall_s=time.perf_counter() - start
            )
        return self._record(trial, settings, outcome, time.perf_counter() - start)

    def _screen_plan(self, study: optuna.Study) -> ScreenPlan:
        """The probes, sized by what the baseline wrote (its output is their text)."""
        m = self.config.measure
        base = records.baseline(records.load(study))
        refs = (
            {
                w: Reference(d.output_tokens.median, d.text, d.reasoning_tokens)
                for w, d in base.workloads.items()
            }
            if base
            else {}
        )
        return ScreenPlan(m.depths, m.probe_tokens, refs)

    def _infeasible(
        self, trial: optuna.Trial, reason: str, detail: str, wall_s: float | None = None
    ) -> list[float]:
        log.info("trial %d infeasible: %s: %s", trial.number, reason, detail)
        records.infeasible(trial, reason, detail, [w.name for w in self.config.workloads], wall_s)
        return [WORST_TOK_S, WORST_TTFT_S] * len(self.config.workloads)

    def _record(
        self, trial: optuna.Trial, settings: LoadSettings, outcome: TrialOutcome, wall_s: float
    ) -> list[float]:
        mismatch = {
            k: [v, outcome.applied.get(k)]
            for k, v in settings.to_dict().items()
            if k in outcome.applied and not same_value(v, outcome.applied[k])
        }
        records.measured(
            trial,
            outcome.applied,
            mismatch,
            {
                "load_s": outcome.load_s,
                "gen_s": outcome.gen_s,
                "wall_s": wall_s,
                "overhead_s": max(0.0, wall_s - outcome.load_s - outcome.gen_s),
                "peak_rss_mb": outcome.peak_rss_mb,
                "gpu_mem_mb": outcome.gpu_mem_mb,
            },
        )
        if records.tag_of(trial) == Tag.BASELINE:
            unset = schedule.unset_swept(self.config, settings, outcome.applied)
            if unset:
                log.info("the baseline left %s to the engine; it applied %s", sorted(unset), unset)
                records.resolved(trial, settings.replace(**unset), list(unset))
        if outcome.screen is not None:
            records.screened(trial, outcome.screen)
        if not outcome.workloads:  # screened only: its estimates are the objectives
            assert outcome.screen is not None
            records.guards_clear(trial, [w.name for w in self.config.workloads])
            values = []
            for w in self.config.workloads:
                e = outcome.screen.estimates[w.name]
                values += [e.mean_tok_s, e.ttft_s if e.answer_s is None else e.answer_s]
            log.info(
                "trial %d screened: %s",
                trial.number,
                json.dumps({w: e.to_dict() for w, e in outcome.screen.estimates.items()}),
            )
            return values
        base = records.baseline(records.load(trial.study))
        is_ref = records.tag_of(trial) == Tag.BASELINE
        problems: dict[FailureReason, list[str]] = {}
        values = []
        for w in self.config.workloads:
            result = outcome.workloads[w.name]
            ref = base.workloads[w.name] if base else None
            g = guards.check(w.name, result, ref, is_ref, self.config.measure)
            records.workload(trial, result, g.prefix, g.output_ratio, g.constraints)
            for reason, what in g.problems.items():
                problems.setdefault(reason, []).append(what)
            values += [result.tok_s.median, _wait(result, ref)]
        if problems:
            reason = next(r for r in records.GUARDS if r in problems)  # truncated first
            records.flagged(trial, reason, "; ".join(w for r in problems.values() for w in r))
        if records.tag_of(trial) == Tag.BASELINE_CHECK:
            self._check_drift(trial, outcome)
        log.info(
            "trial %d done: %s",
            trial.number,
            json.dumps(
                {
                    "applied": outcome.applied,
                    "mismatch": mismatch,
                    "load_s": outcome.load_s,
                    "peak_rss_mb": outcome.peak_rss_mb,
                    "truncated": problems.get(FailureReason.TRUNCATED, []),
                    "workloads": {
                        w: {
                            "tok_s": r.tok_s.to_dict(),
                            "ttft_s": r.ttft_s.to_dict(),
                            "output_tokens": r.output_tokens.to_dict(),
                            "runs": [run.to_dict() for run in r.runs],
                        }
                        for w, r in outcome.workloads.items()
                    },
                }
            ),
        )
        return values


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
    sweep = Sweep(config, runner, storage_url, machine)
    sweep.round_runner = rounds
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


def _wait(result: WorkloadResult, ref: StoredWorkload | None) -> float:
    """The second objective: time to first token, or for a reasoning model the time to its
    answer with the baseline's amount of reasoning at this configuration's decode speed (no
    configuration is rewarded for reasoning less by chance)."""
    thinking = ref.reasoning_tokens if ref is not None else result.reasoning_tokens.median
    tok_s = result.tok_s.median
    return result.ttft_s.median + (thinking / tok_s if thinking and tok_s > 0 else 0.0)
