"""The HTML report's data step (``report_data``); ``report_html`` draws it (``render``).

One self-contained file (plotly.js inlined, opens offline): per workload the Pareto front of
tok/s vs TTFT with the repeats' spread as error bars, a table of the front, parameter
importances, the optimization history; then the applied-vs-requested mismatches, the
infeasible trials with their reasons, and the machine the study ran on.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeper import records, studyrecord
from sweeper.config import StudyConfig
from sweeper.fronts import Point
from sweeper.recommend import Recommendation, WorkloadFront, per_workload
from sweeper.records import TrialRecord


@dataclass(frozen=True)
class Infeasible:
    trial: int
    reason: str
    detail: str
    settings: dict[str, Any]
    tok_s: float | None = None  # measured, when the trial ran (e.g. truncated)
    ttft_s: float | None = None


@dataclass(frozen=True)
class WorkloadView:
    workload: str
    points: list[Point]
    front: list[Point]
    infeasible: list[Infeasible]
    recommendation: Recommendation | None
    importances: dict[str, dict[str, float]] = field(default_factory=dict)
    #: (trial, tok/s) of the feasible trials in the order they ran
    history: list[tuple[int, float]] = field(default_factory=list)


@dataclass(frozen=True)
class ReportData:
    study: str
    storage: str
    workloads: list[WorkloadView]
    mismatches: list[dict[str, Any]]
    machines: list[dict[str, Any]]
    counts: dict[str, int]
    drift: list[dict[str, Any]]


def report_data(study: optuna.Study, config: StudyConfig, storage: str) -> ReportData:
    recs = records.load(study)
    views = [
        workload_view(recs, wf, importances(study, config, w, wf.points))
        for w, wf in per_workload(recs, config, None, studyrecord.confirmations(study)).items()
    ]
    mismatches = [
        {"trial": r.number, **{k: f"{v[0]} -> {v[1]}" for k, v in r.mismatch.items()}}
        for r in recs
        if r.mismatch
    ]
    machines = list(
        {json.dumps(r.machine, sort_keys=True): r.machine for r in recs if r.machine}.values()
    )
    counts: dict[str, int] = {}
    for r in recs:
        if r.state == TrialState.COMPLETE:
            key = r.infeasible_reason() or "feasible"
        else:
            key = r.state.name.lower()
        counts[key] = counts.get(key, 0) + 1
    return ReportData(
        study.study_name,
        storage,
        views,
        mismatches,
        machines,
        counts,
        studyrecord.drift_events(study),
    )


def workload_view(
    recs: Sequence[TrialRecord],
    wf: WorkloadFront,
    importances: dict[str, dict[str, float]] | None = None,
) -> WorkloadView:
    """One workload's view: its front and recommendation (``wf``) with its infeasible trials
    (the Pareto figure's data, for the report and the results page alike)."""
    infeasible = []
    for r in recs:
        reason = r.infeasible_reason(wf.workload)
        if r.state != TrialState.COMPLETE or reason is None:
            continue
        data = r.workloads.get(wf.workload)
        infeasible.append(
            Infeasible(
                trial=r.number,
                reason=reason,
                detail=r.failure_detail,
                settings=r.settings,
                tok_s=data.tok_s.median if data else None,
                ttft_s=data.ttft_s.median if data else None,
            )
        )
    return WorkloadView(
        workload=wf.workload,
        points=wf.points,
        front=wf.front,
        infeasible=infeasible,
        recommendation=wf.recommendation,
        importances=importances or {},
        history=sorted((p.trial, p.tok_s.median) for p in wf.points),
    )


def feasible_study(study: optuna.Study, pts: list[Point]) -> optuna.Study:
    """An in-memory copy with only the trials of ``pts`` (those feasible for a workload):
    placeholder values of failed trials would otherwise dominate importances and history."""
    copy = optuna.create_study(directions=study.directions)
    keep = {p.trial for p in pts}
    copy.add_trials([t for t in study.get_trials(deepcopy=False) if t.number in keep])
    return copy


#: below this many trials measured in full, an importance ranks noise: none is shown
MIN_IMPORTANCE_TRIALS = 10


def importance_note(n: int) -> str:
    return (
        f"Parameter importance: shown from {MIN_IMPORTANCE_TRIALS} feasible trials measured "
        f"in full ({n} so far); fewer would rank noise."
    )


def importances(
    study: optuna.Study, config: StudyConfig, workload: str, pts: list[Point]
) -> dict[str, dict[str, float]]:
    """How much each searched setting moved tok/s and TTFT (PED-ANOVA over the feasible trials
    measured in full), or {} with fewer than ``MIN_IMPORTANCE_TRIALS`` of them."""
    if len(pts) < MIN_IMPORTANCE_TRIALS:
        return {}
    names = [w.name for w in config.workloads]
    i = names.index(workload) * 2
    copy = feasible_study(study, pts)
    out: dict[str, dict[str, float]] = {}
    for label, index, sign in (("tok/s", i, -1.0), ("TTFT", i + 1, 1.0)):

        def target(t: optuna.trial.FrozenTrial, k: int = index, s: float = sign) -> float:
            return s * float(t.values[k])  # PED-ANOVA ranks lower as better: tok/s is negated

        try:
            with warnings.catch_warnings():
                # PED-ANOVA warns that it ranks low targets as good: that is why tok/s is negated
                warnings.simplefilter("ignore", UserWarning)
                out[label] = optuna.importance.get_param_importances(copy, target=target)
        except (ValueError, RuntimeError):
            out[label] = {}  # too few trials, or no parameter varied
    return out
