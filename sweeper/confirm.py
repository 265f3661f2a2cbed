"""Confirmation: a recommendation re-measured side by side with the baseline before any gain is
claimed.

Trials of a sweep run at different times, so the difference between two of them mixes the
settings with whatever the machine was doing then (a busy CPU, heat, a download). Here the
baseline and each candidate are loaded afresh in every round, in a rotating order, and run every
workload; per-round differences are paired (``compare.run_rounds``), which cancels slow drift.
The decision is taken on each workload's expected completion time (TTFT + reference tokens /
tok/s: the recommendation rule's own terms) with a Student t interval:

- looks: after ``min_rounds`` rounds and every round up to ``rounds``; an early look stops only
  when every candidate's verdict is clear at a strict level (a tenth of the error budget each),
  the last look spends what is left (a union bound keeps the false "faster" rate at or below
  1 - level, measured in ``benchmarks/confirm.py``);
- several candidates of one workload share the error budget (Bonferroni);
- a candidate whose output is below ``min_output_ratio`` of the baseline's without reaching the
  cap is "shorter output", never "faster" (the article's second mistake);
- "faster" needs the interval below zero and a change of at least ``min_effect``.
"""

from __future__ import annotations

import datetime
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from sweeper import compare, guards, records, stats, studyrecord
from sweeper.config import StudyConfig
from sweeper.fronts import Point
from sweeper.measurement import CandidateResult, Confirmation
from sweeper.recommend import UNCONFIRMED, WorkloadFront, expected_completion_s, per_workload
from sweeper.settings import LoadSettings

#: Part of the error budget each early look may spend.
EARLY_SHARE = 0.1
#: Smallest change in expected completion time called faster (or slower).
MIN_EFFECT = 0.01


@dataclass(frozen=True)
class Plan:
    """What a confirmation will measure: the baseline and each workload's candidates."""

    baseline: dict[str, Any]
    candidates: dict[str, list[Point]]
    reference_tokens: dict[str, float]

    def configs(self) -> list[compare.Config]:
        """The baseline first, then every distinct candidate once (workloads share rounds)."""
        out = [compare.Config("baseline", LoadSettings(**self.baseline))]
        seen = [self.baseline]
        for pts in self.candidates.values():
            for p in pts:
                if p.settings not in seen:
                    seen.append(p.settings)
                    out.append(compare.Config(f"trial {p.trial}", LoadSettings(**p.settings)))
        return out


def plan(views: dict[str, WorkloadFront], most: int) -> Plan | None:
    """Each workload's recommended candidate and up to ``most - 1`` runner-ups (any feasible
    trial: the front itself is noisy) whose expected completion time is within the noise of
    it; None when no workload has a candidate other than the baseline."""
    baseline: dict[str, Any] | None = None
    candidates: dict[str, list[Point]] = {}
    reference: dict[str, float] = {}
    for w, view in views.items():
        rec = view.recommendation
        base = next((p for p in view.points if p.baseline), None)
        if rec is None or base is None or rec.point.settings == base.settings:
            continue
        baseline = base.settings
        tokens = rec.reference_tokens
        first = rec.point
        others = sorted(
            (p for p in view.points if p.settings not in (base.settings, first.settings)),
            key=lambda p: expected_completion_s(p, tokens),
        )
        close: list[Point] = []
        for p in others:
            if _within_noise(first, p, tokens) and all(p.settings != q.settings for q in close):
                close.append(p)
        candidates[w] = [first, *close[: most - 1]]
        reference[w] = tokens
    if baseline is None:
        return None
    return Plan(baseline, candidates, reference)


def _within_noise(a: Point, b: Point, tokens: float) -> bool:
    """Their repeats cannot tell the two apart on expected completion time."""

    def completion(p: Point) -> list[float]:
        return [f + tokens / t for t, f in zip(p.runs_tok_s, p.runs_ttft_s, strict=True) if t > 0]

    ca, cb = completion(a), completion(b)
    return bool(ca and cb) and not stats.relative_difference(ca, cb).excludes_zero()


def looks(config: StudyConfig) -> list[tuple[int, float]]:
    """(rounds done, error budget) of each look; the budgets add up to 1 - level."""
    c = config.confirm
    alpha = 1 - c.level
    early = list(range(c.min_rounds, c.rounds))
    spent = alpha * EARLY_SHARE * len(early)
    return [(r, alpha * EARLY_SHARE) for r in early] + [(c.rounds, alpha - spent)]


def run(
    config: StudyConfig,
    the_plan: Plan,
    runner: compare.Runner,
    on_round: compare.OnRound | None = None,
    machine: str | None = None,
    engine: str | None = None,
) -> list[Confirmation]:
    """Measure the plan in interleaved rounds and decide, workload by workload."""
    configs = the_plan.configs()
    budgets = dict(looks(config))
    workloads = [w.name for w in config.workloads]

    def clear(results: list[compare.ConfigResult], done: int) -> bool:
        if done not in budgets or done == config.confirm.rounds:
            return False
        return all(
            c.verdict not in ("no detectable difference",)
            for w in the_plan.candidates
            for c in decide(config, the_plan, results, w, budgets[done])
        )

    results = compare.run_rounds(
        configs, workloads, config.confirm.rounds, runner, on_round, stop=clear
    )
    done = len(results[0].rounds[workloads[0]]["tok_s"])
    ended = time.time()
    when = datetime.datetime.fromtimestamp(ended).isoformat(timespec="seconds")
    out = []
    for w in the_plan.candidates:
        decided = decide(config, the_plan, results, w, budgets[done])
        faster = [c for c in decided if c.verdict == "faster"]
        chosen = min(faster, key=lambda c: c.completion_pct[0]).trial if faster else None
        out.append(
            Confirmation(
                workload=w,
                when=when,
                rounds=done,
                level=config.confirm.level,
                baseline_settings=dict(the_plan.baseline),
                reference_tokens=the_plan.reference_tokens[w],
                candidates=decided,
                chosen=chosen,
                machine=machine,
                engine=engine,
                at=ended,
            )
        )
    return out


def decide(
    config: StudyConfig,
    the_plan: Plan,
    results: Sequence[compare.ConfigResult],
    workload: str,
    alpha: float,
) -> list[CandidateResult]:
    """Each candidate of ``workload`` against the baseline, with ``alpha`` shared among them."""
    by_settings = {_key(r.settings): r for r in results}
    base = by_settings[_key(the_plan.baseline)]
    tokens = the_plan.reference_tokens[workload]
    cands = the_plan.candidates[workload]
    decision_level = 1 - alpha / len(cands)
    base_completion = _completion(base, workload, tokens)
    base_output = statistics.median(base.rounds[workload]["output_tokens"])
    out = []
    level = config.confirm.level
    for p in cands:
        r = by_settings[_key(p.settings)]
        completion_r = _completion(r, workload, tokens)
        completion = stats.paired_difference(base_completion, completion_r, decision_level)
        output = statistics.median(r.rounds[workload]["output_tokens"])
        ratio = output / base_output if base_output else 1.0
        if guards.shorter(ratio, all(r.hit_cap[workload]), config.measure.min_output_ratio):
            verdict = "shorter output"
        elif completion.below_zero() and completion.estimate <= -MIN_EFFECT:
            verdict = "faster"
        elif completion.above_zero() and completion.estimate >= MIN_EFFECT:
            verdict = "slower"
        else:
            verdict = "no detectable difference"
        out.append(
            CandidateResult(
                trial=p.trial,
                settings=p.settings,
                verdict=verdict,
                completion_pct=_pct(stats.paired_difference(base_completion, completion_r, level)),
                decision_level=round(decision_level, 6),
                tok_s_pct=_pct(_paired(base, r, workload, "tok_s", level)),
                ttft_pct=_pct(_paired(base, r, workload, "ttft_s", level)),
                output_ratio=round(ratio, 4),
                stop_reasons=sorted(r.stop_reasons[workload]),
                gpu_layers=r.gpu_layers[-1] if r.gpu_layers else None,
            )
        )
    return out


def _completion(r: compare.ConfigResult, workload: str, tokens: float) -> list[float]:
    rounds = r.rounds[workload]
    return [
        ttft + (tokens / tok if tok > 0 else float("inf"))
        for tok, ttft in zip(rounds["tok_s"], rounds["ttft_s"], strict=True)
    ]


def _paired(
    base: compare.ConfigResult, r: compare.ConfigResult, workload: str, metric: str, level: float
) -> stats.Interval:
    return stats.paired_difference(base.rounds[workload][metric], r.rounds[workload][metric], level)


def _pct(i: stats.Interval) -> list[float]:
    return [round(v * 100, 2) for v in i.to_list()]


def _key(settings: dict[str, Any]) -> tuple[tuple[str, object], ...]:
    return tuple(sorted(settings.items()))


def confirm_study(
    study: optuna.Study,
    config: StudyConfig,
    runner: compare.Runner,
    only: str | None = None,
    again: bool = False,
    on_round: compare.OnRound | None = None,
    machine: str | None = None,
    engine: str | None = None,
) -> list[Confirmation]:
    """Confirm the study's recommendations (``only`` one workload's when given) and store the
    results. Without ``again``, only recommendations not yet settled by a confirmation."""
    recs = records.load(study)
    views = per_workload(recs, config, only)
    if not again:
        settled = per_workload(recs, config, only, studyrecord.confirmations(study))
        views = {
            w: v
            for w, v in views.items()
            if (r := settled[w].recommendation) is not None and r.status == UNCONFIRMED
        }
    the_plan = plan(views, config.confirm.candidates)
    if the_plan is None:
        return []
    done = run(config, the_plan, runner, on_round, machine, engine)
    studyrecord.add_confirmations(study, done)
    return done


def pending(study: optuna.Study, config: StudyConfig) -> bool:
    """Does a workload have a candidate that beat the baseline and awaits confirmation?"""
    views = per_workload(records.load(study), config, None, studyrecord.confirmations(study))
    return any(v.recommendation and v.recommendation.status == UNCONFIRMED for v in views.values())
