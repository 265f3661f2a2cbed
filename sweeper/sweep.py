"""The sweep: an Optuna multi-objective study over load settings, the trial objective and the
schedule (baseline first, retries, drift checks).

Objectives, per workload: maximize decode tok/s and minimize time to first token (medians of
the repeats). Constraints (feasible when <= 0), set on every trial:
- ``failed``: the trial could not be measured (its reason is stored as ``failure_reason``);
- ``truncated:<workload>``: output below ``min_output_ratio`` x the baseline's without hitting
  the token cap, so a "faster" run is not merely a shorter one;
- ``diverged:<workload>``: output differing from the baseline's before ``min_prefix_chars``.
Infeasible trials are COMPLETE with dominated placeholder values (0 tok/s, 3600 s), never FAIL:
the sampler learns to avoid them, and a FAIL is reserved for an interrupted trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from sweeper import fingerprint, records, stats, storage, system
from sweeper.config import StudyConfig
from sweeper.errors import FailureReason, TrialFailure
from sweeper.fronts import pareto_front, points
from sweeper.measure import Adaptive
from sweeper.measurement import TrialOutcome, divergence
from sweeper.records import Tag
from sweeper.runner import ChildProcessRunner, Progress, Runner, worker_spec
from sweeper.settings import LoadSettings, invalid_combination

log = logging.getLogger("sweeper")

_FINISHED = (TrialState.COMPLETE, TrialState.FAIL)
#: A baseline re-run this much slower or faster (and outside the noise) is drift.
DRIFT_MIN = 0.03
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

    def open(self) -> optuna.Study:
        return storage.open_study(self.config, self.storage_url, create=True)

    def run(
        self,
        study: optuna.Study,
        trials: int | None = None,
        timeout_s: float | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> int:
        """Run until the study holds ``trials`` complete trials; return how many ran now."""
        target = trials or self.config.budget.trials
        before = len(study.get_trials(deepcopy=False, states=_FINISHED))
        self._enqueue_baseline(study)
        self._enqueue_retries(study)
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if done >= target:
            return 0
        study.sampler = self._sampler(study, target)
        study.optimize(
            self.objective,
            n_trials=target - done,
            timeout=timeout_s,
            # Running trials count too: with several workers on one study, a worker does not
            # start a trial that other workers' running trials already make unnecessary.
            callbacks=[
                MaxTrialsCallback(target, states=(TrialState.COMPLETE, TrialState.RUNNING)),
                self._enqueue_drift_check,
                *callbacks,
            ],
        )
        return len(study.get_trials(deepcopy=False, states=_FINISHED)) - before

    def _sampler(self, study: optuna.Study, target: int) -> optuna.samplers.BaseSampler:
        # A resumed run must not replay the first run's random start-up proposals: the seed
        # moves on with the number of trials already stored.
        seed = self.config.sampler_seed + len(study.get_trials(deepcopy=False))
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=max(4, min(10, target // 5))
        )

    def _enqueue_baseline(self, study: optuna.Study) -> None:
        if any(r.tag == Tag.BASELINE for r in records.load(study)):
            return
        dims = self.config.space.dimensions
        params = {
            name: value
            for name, value in self.config.baseline.to_dict().items()
            if name in dims and dims[name].contains(value)
        }
        records.enqueue(study, params, Tag.BASELINE)

    def _adaptive(self, study: optuna.Study) -> Adaptive | None:
        """Extra repeats for trials near a workload's current front (see measure.Adaptive)."""
        m = self.config.measure
        if m.repeat_cap <= m.repeats:
            return None
        recs = records.load(study)
        fronts = {
            w.name: [(p.tok_s.median, p.ttft_s.median) for p in pareto_front(points(recs, w.name))]
            for w in self.config.workloads
        }
        return Adaptive(m.repeat_cap, m.target_ci, fronts)

    def _enqueue_drift_check(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Re-run the baseline every so often: if it moved, the machine changed under the
        sweep (heat, background load, another app on the GPU)."""
        m = self.config.measure
        if m.recheck_trials is None and m.recheck_s is None:
            return
        recs = records.load(study)
        anchors = [r for r in recs if r.is_anchor]
        if not anchors or any(r.state == TrialState.WAITING for r in anchors):
            return
        last = anchors[-1]
        since = [r for r in recs if r.number > last.number and r.state.is_finished()]
        due_by_count = m.recheck_trials is not None and len(since) >= m.recheck_trials
        due_by_time = (
            m.recheck_s is not None
            and last.datetime_complete is not None
            and (datetime.datetime.now() - last.datetime_complete).total_seconds() >= m.recheck_s
        )
        if due_by_count or due_by_time:
            records.enqueue(study, anchors[0].params, Tag.BASELINE_CHECK)

    def _check_drift(self, trial: optuna.Trial, outcome: TrialOutcome) -> None:
        recs = records.load(trial.study)
        base = records.baseline(recs)
        if base is None:
            return
        moved = {}
        for w, result in outcome.workloads.items():
            ref = base.workloads[w].runs_tok_s
            now = [r.decode_tok_s for r in result.runs]
            diff = stats.relative_difference(ref, now)
            if diff.excludes_zero() and abs(diff.estimate) >= DRIFT_MIN:
                moved[w] = [round(v * 100, 2) for v in diff.to_list()]
        records.drift(trial, moved)
        if not moved:
            return
        checks = [r.number for r in recs if r.is_anchor and r.number < trial.number]
        since = max(checks) if checks else 0
        event = {"check_trial": trial.number, "since_trial": since, "tok_s_change_pct": moved}
        records.add_drift_event(trial.study, event)
        log.warning(
            "drift: the baseline re-run (trial %d) moved %s; trials %d-%d may be affected",
            trial.number,
            ", ".join(f"{w} {v[0]:+.1f}% tok/s" for w, v in moved.items()),
            since + 1,
            trial.number - 1,
        )

    def _enqueue_retries(self, study: optuna.Study) -> None:
        """Trials interrupted by Ctrl-C run again, once, when the sweep resumes."""
        recs = records.load(study)
        retried = {r.retry_of for r in recs}
        for r in recs:
            if (
                r.state == TrialState.FAIL
                and r.number not in retried
                and r.failure_reason == FailureReason.INTERRUPTED
            ):
                records.enqueue(study, r.params, r.tag, retry_of=r.number)

    def objective(self, trial: optuna.Trial) -> list[float]:
        try:
            return self._objective(trial)
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM anywhere in the trial: marked so that the next run retries it
            records.interrupted(trial)
            raise

    def _objective(self, trial: optuna.Trial) -> list[float]:
        cfg = self.config
        tag = records.tag_of(trial)
        is_baseline = tag in (Tag.BASELINE, Tag.BASELINE_CHECK)
        if tag == Tag.BASELINE and _earlier_baseline(trial):
            # Two workers starting together may both enqueue the baseline: the second run
            # of it is kept as a repeat measurement, under its own tag.
            records.set_tag(trial, Tag.BASELINE_REPEAT)
        settings = cfg.space.suggest(trial, cfg.baseline if is_baseline else None)
        records.start(trial, settings, f"{socket.gethostname()}:{os.getpid()}", self.machine)
        log.info("trial %d start: %s", trial.number, json.dumps(settings.to_dict()))
        start = time.perf_counter()
        why = invalid_combination(settings)
        if why:
            return self._infeasible(trial, FailureReason.INVALID_COMBINATION, why)
        try:
            outcome = self.runner(settings, self.progress, self._adaptive(trial.study))
        except TrialFailure as exc:
            return self._infeasible(
                trial, exc.reason, exc.detail, wall_s=time.perf_counter() - start
            )
        return self._record(trial, settings, outcome, time.perf_counter() - start)

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
            if k in outcome.applied and not _same(v, outcome.applied[k])
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
        base = records.baseline(records.load(trial.study))
        is_first_baseline = records.tag_of(trial) == Tag.BASELINE
        need = self.config.measure.min_prefix_chars
        truncated, diverged, values = [], [], []
        for w in self.config.workloads:
            result = outcome.workloads[w.name]
            text = result.runs[0].text
            ratio, prefix = 1.0, None
            if base is not None:
                ref = base.workloads[w.name]
                ratio = (
                    result.output_tokens.median / ref.output_tokens.median
                    if ref.output_tokens.median
                    else 1.0
                )
                prefix = divergence(ref.text, text)
            elif is_first_baseline:
                prefix = len(text)  # the reference itself
            short = need > 0 and prefix is not None and prefix < need
            gap = float(need - prefix) if short and prefix is not None else 0.0
            if short:
                diverged.append(
                    f"{w.name} differs from the baseline's output at character {prefix}"
                )
            violation = (
                0.0 if result.hit_cap else round(self.config.measure.min_output_ratio - ratio, 4)
            )
            if violation > 0:
                truncated.append(f"{w.name} {ratio:.0%} of the baseline's output")
            records.workload(
                trial,
                result,
                prefix,
                ratio,
                {FailureReason.DIVERGED: gap, FailureReason.TRUNCATED: violation},
            )
            values += [result.tok_s.median, result.ttft_s.median]
        if truncated or diverged:
            reason = FailureReason.TRUNCATED if truncated else FailureReason.DIVERGED
            records.flagged(trial, reason, "; ".join(truncated + diverged))
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
                    "truncated": truncated,
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
) -> tuple[Sweep, optuna.Study]:
    """Everything a sweep needs before its first trial, each check failing with one line:
    the backend and model, the storage, the study's identity and the machine."""
    spec = worker_spec(config, host)
    machine = fingerprint.machine(config.backend, spec.model)
    timeout = config.budget.trial_timeout_s
    sweep = Sweep(config, ChildProcessRunner(spec, timeout), storage_url, machine)
    sweep.round_runner = ChildProcessRunner(dataclasses.replace(spec, repeats=1), timeout)
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


def _earlier_baseline(trial: optuna.Trial) -> bool:
    return any(
        r.number < trial.number and r.tag == Tag.BASELINE and r.state != TrialState.FAIL
        for r in records.load(trial.study)
    )


def _same(requested: Any, applied: Any) -> bool:
    if isinstance(requested, float) and isinstance(applied, int | float):
        return abs(requested - applied) < 0.02
    return bool(requested == applied)
