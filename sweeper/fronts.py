"""Each workload's view of a study: its points, its Pareto front, and the status summary.

Pure functions over typed trial records (``records.load``); ``cli.py`` formats them. Each
workload has its own 2-D front (tok/s up, TTFT down) over the trials feasible for it, because
no setting is fast everywhere.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import TrialState

from sweeper import fingerprint, objectives, stats
from sweeper.measurement import Spread
from sweeper.records import FULL, SCREEN, TrialRecord, baseline


@dataclass(frozen=True)
class Point:
    """One trial as seen from one workload."""

    trial: int
    settings: dict[str, Any]
    tok_s: Spread
    ttft_s: Spread
    output_tokens: float
    stop_reasons: list[str]
    baseline: bool
    mismatch: dict[str, Any] = field(default_factory=dict)
    delta_tok_s_pct: float | None = None
    delta_ttft_pct: float | None = None
    machine: str | None = None  # fingerprint.short_id of the machine it ran on
    #: relative change vs the baseline, % (95% bootstrap of the runs; trials measured at
    #: different times: it says nothing about the machine changing between them)
    delta_tok_s_ci: stats.Interval | None = None
    delta_ttft_ci: stats.Interval | None = None
    output_ratio: float | None = None  # median output / the baseline's
    divergence: int | None = None  # first character where the output differs from baseline's
    tag: str | None = None
    runs_tok_s: list[float] = field(default_factory=list)
    runs_ttft_s: list[float] = field(default_factory=list)
    #: measured between two baseline runs that disagree (the machine changed under it)
    unreliable: bool = False
    #: "full" (every workload to its end, repeated) or "screen" (estimated from probes)
    fidelity: str = FULL
    #: a reasoning model's: tokens before the answer, the answer's, and when the answer
    #: began (measured); and the second objective, the expected time to the answer with the
    #: baseline's amount of reasoning (None: it does not reason, the objective is TTFT)
    reasoning_tokens: float = 0.0
    answer_tokens: float | None = None
    tta_s: Spread | None = None
    wait_s: Spread | None = None

    @property
    def first_s(self) -> Spread:
        """The second objective: the time to first token, or to the answer."""
        return self.wait_s or self.ttft_s

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["tok_s"], d["ttft_s"] = self.tok_s.to_dict(), self.ttft_s.to_dict()
        for key in ("tta_s", "wait_s"):
            d[key] = d[key].to_dict() if d[key] is not None else None
        for key in ("delta_tok_s_ci", "delta_ttft_ci"):
            d[key] = d[key].to_list() if d[key] is not None else None
        return d


def points(recs: Sequence[TrialRecord], workload: str, fidelity: str = FULL) -> list[Point]:
    """Every trial measured at ``fidelity`` that is feasible for ``workload``, with deltas
    against the baseline (answered duplicates are left out: they are their original)."""
    if fidelity == SCREEN:
        return _screened(recs, workload)
    base = baseline(recs)
    ref = base.workloads.get(workload) if base else None
    shaky = unreliable(recs)
    out = []
    for r in recs:
        data = r.workloads.get(workload)
        if r.state != TrialState.COMPLETE or data is None or r.infeasible_reason(workload):
            continue
        if r.duplicate_of is not None:
            continue
        out.append(
            Point(
                trial=r.number,
                settings=r.settings,
                tok_s=data.tok_s,
                ttft_s=data.ttft_s,
                output_tokens=data.output_tokens.median,
                stop_reasons=data.stop_reasons,
                baseline=r.is_baseline,
                mismatch=r.mismatch,
                delta_tok_s_pct=_pct(data.tok_s.median, ref.tok_s.median) if ref else None,
                delta_ttft_pct=_pct(data.ttft_s.median, ref.ttft_s.median) if ref else None,
                machine=fingerprint.short_id(r.machine) if r.machine else None,
                delta_tok_s_ci=_ci(ref.runs_tok_s, data.runs_tok_s) if ref else None,
                delta_ttft_ci=_ci(ref.runs_ttft_s, data.runs_ttft_s) if ref else None,
                output_ratio=data.output_ratio,
                divergence=data.divergence,
                tag=r.tag,
                runs_tok_s=data.runs_tok_s,
                runs_ttft_s=data.runs_ttft_s,
                unreliable=r.number in shaky,
                reasoning_tokens=data.reasoning_tokens,
                answer_tokens=data.answer_tokens,
                tta_s=data.tta_s,
                wait_s=objectives.wait(data.runs, ref.runs if ref else None),
            )
        )
    return out


def _screened(recs: Sequence[TrialRecord], workload: str) -> list[Point]:
    """The screening's estimates as points: expected mean decode tok/s over the workload's
    length, TTFT of its prompt, the output it is expected to write."""
    base = baseline(recs)
    ref = base.estimates.get(workload) if base else None
    shaky = unreliable(recs)
    out = []
    for r in recs:
        e = r.estimates.get(workload)
        if r.state != TrialState.COMPLETE or e is None or r.duplicate_of is not None:
            continue
        if r.infeasible_reason(workload):
            continue
        out.append(
            Point(
                trial=r.number,
                settings=r.settings,
                tok_s=Spread.of([e.mean_tok_s]),
                ttft_s=Spread.of([e.ttft_s]),
                output_tokens=e.expected_tokens,
                stop_reasons=[],
                baseline=r.is_baseline,
                mismatch=r.mismatch,
                delta_tok_s_pct=_pct(e.mean_tok_s, ref.mean_tok_s) if ref else None,
                delta_ttft_pct=_pct(e.ttft_s, ref.ttft_s) if ref else None,
                machine=fingerprint.short_id(r.machine) if r.machine else None,
                tag=r.tag,
                runs_tok_s=[e.mean_tok_s],
                runs_ttft_s=[e.ttft_s],
                unreliable=r.number in shaky,
                fidelity=SCREEN,
                wait_s=Spread.of([objectives.screened_wait(e)])
                if e.answer_s not in (None, e.ttft_s)
                else None,
            )
        )
    return out


def unreliable(recs: Sequence[TrialRecord]) -> set[int]:
    """Trials measured between two baseline runs that disagree: a baseline re-run that moved
    beyond its noise makes every trial since the previous one suspect."""
    baseline_runs = [r for r in recs if r.is_baseline_run and r.state == TrialState.COMPLETE]
    out: set[int] = set()
    for before, check in itertools.pairwise(baseline_runs):
        if check.drift:
            out.update(range(before.number + 1, check.number))
    return out


def dominates(a: Point, b: Point) -> bool:
    """``a`` is at least as fast and as soon as ``b``, and better on one of them."""
    at, bt = a.tok_s.median, b.tok_s.median
    af, bf = a.first_s.median, b.first_s.median
    return at >= bt and af <= bf and (at > bt or af < bf)


def pareto_front(pts: Sequence[Point]) -> list[Point]:
    """Points no other point beats on both tok/s (higher) and TTFT (lower); fastest first."""
    front = [p for p in pts if not any(dominates(q, p) for q in pts)]
    return sorted(front, key=lambda p: -p.tok_s.median)


def status(
    recs: Sequence[TrialRecord], workloads: Sequence[str], drift_events: list[dict[str, Any]]
) -> dict[str, Any]:
    states = Counter(r.state.name.lower() for r in recs)
    reasons = Counter(
        reason
        for r in recs
        if r.state == TrialState.COMPLETE and (reason := r.infeasible_reason()) is not None
    )
    best = {}
    for w in workloads:
        pts = points(recs, w)
        if pts:
            p = max(pts, key=lambda p: p.tok_s.median)
            best[w] = {
                "trial": p.trial,
                "tok_s": p.tok_s.median,
                "ttft_s": p.ttft_s.median,
                "delta_tok_s_pct": p.delta_tok_s_pct,
            }
    workers = Counter(r.worker for r in recs if r.worker)  # a queued trial has none yet
    machines = Counter(fingerprint.short_id(r.machine) for r in recs if r.machine)
    base = baseline(recs)
    measured = [r for r in recs if r.state == TrialState.COMPLETE and r.duplicate_of is None]
    return {
        "trials": len(recs),
        "screened": sum(r.fidelity == SCREEN for r in measured),
        "measured_full": sum(r.fidelity == FULL for r in measured),
        "repeats_answered": sum(r.duplicate_of is not None for r in recs),
        "states": dict(states),
        "complete": states.get("complete", 0),
        "feasible": states.get("complete", 0) - sum(reasons.values()),
        "infeasible": dict(reasons),
        "baseline_trial": base.number if base else None,
        "best": best,
        "workers": dict(workers),
        "drift_events": drift_events,
        "machines": dict(machines),
    }


def _ci(ref: list[float], runs: list[float]) -> stats.Interval | None:
    if not ref or not runs:
        return None
    d = stats.relative_difference(ref, runs)
    return stats.Interval(*(round(v * 100, 2) for v in d.to_list()))


def _pct(value: float, ref: float) -> float | None:
    return round((value - ref) / ref * 100, 2) if ref else None
