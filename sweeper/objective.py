"""One trial of the sweep, given one snapshot of the stored trials: its settings proposed,
measured (or answered from a trial that measured them already) and recorded; its objective
values returned (see objectives.py), or dominated placeholders when it is infeasible.

Constraints (feasible when <= 0), set on every trial:
- ``failed``: the trial could not be measured (its reason is stored as ``failure_reason``);
- ``truncated:<workload>``: output below ``min_output_ratio`` x the baseline's without hitting
  the token cap, so a "faster" run is not merely a shorter one;
- ``diverged:<workload>``: output differing from the baseline's before ``min_prefix_chars``.
Infeasible trials are COMPLETE with dominated placeholder values (0 tok/s, 3600 s), never FAIL:
the sampler learns to avoid them; a FAIL is an interrupted trial or one whose engine was lost."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from sweeper import guards, objectives, records, schedule, studyrecord, system
from sweeper.config import StudyConfig
from sweeper.errors import EngineAway, FailureReason, TrialFailure
from sweeper.fronts import pareto_front, points
from sweeper.measure import Adaptive
from sweeper.measurement import TrialOutcome
from sweeper.records import FULL, SCREEN, Tag, TrialRecord
from sweeper.runner import Progress, Runner, TrialPlan
from sweeper.screening import Reference, ScreenPlan
from sweeper.settings import LoadSettings, invalid_combination, same_value

log = logging.getLogger("sweeper")

WORST_TOK_S = 0.0
WORST_TTFT_S = 3600.0


class Objective:
    """Trial -> objective values. Each trial reads the stored trials once (``snapshot``); what
    is decided after it (a baseline re-run due, the deadline) uses that snapshot with the
    finished trial in it (``after``)."""

    def __init__(
        self,
        config: StudyConfig,
        runner: Runner,
        worker: str,
        machine: dict[str, Any],
        progress: Progress | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config, self.runner, self.worker, self.machine = config, runner, worker, machine
        self.progress, self.clock = progress, clock
        #: the stored trials as the last trial began
        self.snapshot: list[TrialRecord] = []

    def after(self, trial: FrozenTrial) -> list[TrialRecord]:
        """The snapshot with ``trial`` as it finished."""
        return [r for r in self.snapshot if r.number != trial.number] + [records.read(trial)]

    def __call__(self, trial: optuna.Trial, limit: int | None = None) -> list[float]:
        try:
            with system.interruptible():
                return self._trial(trial, limit)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: marked so that the next run retries it
            records.interrupted(trial)
            raise
        except EngineAway:  # the engine did not come back: the next run retries it too
            records.engine_lost(trial)
            raise

    def _trial(self, trial: optuna.Trial, limit: int | None) -> list[float]:
        cfg = self.config
        tag = records.tag_of(trial)
        baseline_run = tag in (Tag.BASELINE, Tag.DRIFT_CHECK)
        recs = self.snapshot = records.load(trial.study)
        if limit is not None and schedule.surplus(recs, trial.number, limit):
            trial.study.stop()
            raise optuna.TrialPruned("the study reached its trial target as this trial began")
        if tag == Tag.BASELINE and schedule.earlier_baseline(recs, trial.number):
            # Two workers starting together may both enqueue the baseline: the second run
            # of it is kept as a repeat measurement, under its own tag.
            records.set_tag(trial, Tag.BASELINE_REPEAT)
        settings = cfg.space.suggest(trial, cfg.baseline if baseline_run else None)
        if baseline_run:  # what the first baseline left to the engine is sent explicitly now
            settings = settings.replace(**schedule.pinned_baseline(recs))
        records.start(trial, settings, self.worker, self.machine)
        log.info("trial %d start: %s", trial.number, json.dumps(settings.to_dict()))
        start = self.clock()
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
        base = records.baseline(recs)
        the_plan = TrialPlan(
            full=full,
            adaptive=adaptive(cfg, recs) if full else None,
            # the baseline's re-runs are screened too: how far apart two screenings of one
            # configuration are sets how close to the best a finalist must be
            screen=screen_plan(cfg, base) if screening and tag != Tag.PROMOTED else None,
        )
        try:
            outcome = self.runner(settings, self.progress, the_plan)
        except TrialFailure as exc:
            return self._infeasible(trial, exc.reason, exc.detail, wall_s=self.clock() - start)
        values = record(trial, cfg, settings, outcome, self.clock() - start, base)
        if records.tag_of(trial) == Tag.DRIFT_CHECK:
            check_drift(trial, outcome, recs)
        return values

    def _infeasible(
        self, trial: optuna.Trial, reason: str, detail: str, wall_s: float | None = None
    ) -> list[float]:
        log.info("trial %d infeasible: %s: %s", trial.number, reason, detail)
        records.infeasible(trial, reason, detail, [w.name for w in self.config.workloads], wall_s)
        return [WORST_TOK_S, WORST_TTFT_S] * len(self.config.workloads)


def adaptive(config: StudyConfig, recs: Sequence[TrialRecord]) -> Adaptive | None:
    """Extra repeats for trials near a workload's current front (see measure.Adaptive)."""
    m = config.measure
    if m.repeat_cap <= m.repeats:
        return None
    fronts = {
        w.name: [(p.tok_s.median, p.first_s.median) for p in pareto_front(points(recs, w.name))]
        for w in config.workloads
    }
    return Adaptive(m.repeat_cap, m.target_ci, fronts)


def screen_plan(config: StudyConfig, base: TrialRecord | None) -> ScreenPlan:
    """The probes, sized by what the baseline wrote (its output is their text)."""
    m = config.measure
    refs = (
        {
            w: Reference(d.output_tokens.median, d.text, d.reasoning_tokens)
            for w, d in base.workloads.items()
        }
        if base
        else {}
    )
    return ScreenPlan(m.depths, m.probe_tokens, refs)


def record(
    trial: optuna.Trial,
    config: StudyConfig,
    settings: LoadSettings,
    outcome: TrialOutcome,
    wall_s: float,
    base: TrialRecord | None,
) -> list[float]:
    """Store what the trial measured against the baseline (``base``); its objective values."""
    applied = outcome.applied.settings
    mismatch = {
        k: [v, applied.get(k)]
        for k, v in settings.to_dict().items()
        if k in applied and not same_value(v, applied[k])
    }
    records.measured(
        trial,
        outcome.applied.stored(),
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
    is_ref = records.tag_of(trial) == Tag.BASELINE
    if is_ref:
        unset = schedule.unset_swept(config, settings, applied)
        if unset:
            log.info("the baseline left %s to the engine; it applied %s", sorted(unset), unset)
            records.resolved(trial, settings.replace(**unset), list(unset))
    if outcome.screen is not None:
        records.screened(trial, outcome.screen)
    if not outcome.workloads:  # screened only: its estimates are the objectives
        assert outcome.screen is not None
        records.guards_clear(trial, [w.name for w in config.workloads])
        estimates = outcome.screen.estimates
        log.info(
            "trial %d screened: %s",
            trial.number,
            json.dumps({w: e.to_dict() for w, e in estimates.items()}),
        )
        return [v for w in config.workloads for v in objectives.screened(estimates[w.name])]
    problems: dict[FailureReason, list[str]] = {}
    values = []
    for w in config.workloads:
        result = outcome.workloads[w.name]
        ref = base.workloads[w.name] if base else None
        g = guards.check(w.name, result, ref, is_ref, config.measure)
        records.workload(trial, result, g.prefix, g.output_ratio, g.constraints)
        for reason, what in g.problems.items():
            problems.setdefault(reason, []).append(what)
        values += objectives.values(result.runs, ref.runs if ref else None)
    if problems:
        reason = next(r for r in records.GUARDS if r in problems)  # truncated first
        records.flagged(trial, reason, "; ".join(w for r in problems.values() for w in r))
    log.info("trial %d done: %s", trial.number, json.dumps(_done(outcome, mismatch, problems)))
    return values


def _done(
    outcome: TrialOutcome, mismatch: dict[str, Any], problems: dict[FailureReason, list[str]]
) -> dict[str, Any]:
    return {
        "applied": outcome.applied.stored(),
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


def check_drift(trial: optuna.Trial, outcome: TrialOutcome, recs: Sequence[TrialRecord]) -> None:
    """A baseline re-run that moved: the machine changed under the sweep (heat, background
    load, another app on the GPU); stored on the trial and the study, and said."""
    base = records.baseline(recs)
    if base is None:
        return
    moved = schedule.drift(base, outcome)
    records.drift(trial, moved)
    if not moved:
        return
    checks = [r.number for r in recs if r.is_baseline_run and r.number < trial.number]
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
