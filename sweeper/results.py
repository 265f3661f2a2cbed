"""Reading a study back: per-workload points, the Pareto front, and the status summary.

Data only; ``cli.py`` formats it. Each workload has its own 2-D front (tok/s up, TTFT down)
over the trials that are feasible for it, because no setting is fast everywhere.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper import fingerprint, stats
from sweeper.study import GUARDS, baseline_trial


@dataclass(frozen=True)
class Point:
    """One trial as seen from one workload."""

    trial: int
    settings: dict[str, Any]
    tok_s: dict[str, float]  # Spread as a dict: median, min, max, q1, q3, n
    ttft_s: dict[str, float]
    output_tokens: float
    stop_reasons: list[str]
    baseline: bool
    mismatch: dict[str, Any] = field(default_factory=dict)
    delta_tok_s_pct: float | None = None
    delta_ttft_pct: float | None = None
    machine: str | None = None  # fingerprint.short_id of the machine it ran on
    #: relative change vs the baseline, % [estimate, low, high] (95% bootstrap of the runs)
    delta_tok_s_ci: list[float] | None = None
    delta_ttft_ci: list[float] | None = None
    output_ratio: float | None = None  # median output / the baseline's
    divergence: int | None = None  # first character where the output differs from baseline's
    tag: str | None = None
    runs_tok_s: list[float] = field(default_factory=list)
    runs_ttft_s: list[float] = field(default_factory=list)

    @property
    def beats_noise(self) -> bool:
        """The tok/s or TTFT change against the baseline is outside the noise (either way)."""
        return any(
            ci is not None and (ci[1] > 0 or ci[2] < 0)
            for ci in (self.delta_tok_s_ci, self.delta_ttft_ci)
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def failure_reason(t: FrozenTrial, workload: str | None = None) -> str | None:
    """Why a trial is infeasible (for ``workload`` when given), or None."""
    if t.state != TrialState.COMPLETE:
        return t.user_attrs.get("failure_reason") or t.state.name.lower()
    if t.constraints.get("failed", 0.0) > 0:
        return str(t.user_attrs.get("failure_reason", "failed"))
    for guard in GUARDS:
        keys = (
            [f"{guard}:{workload}"]
            if workload
            else [k for k in t.constraints if k.startswith(f"{guard}:")]
        )
        if any(t.constraints.get(k, 0.0) > 0 for k in keys):
            return guard
    return None


def points(study: optuna.Study, workload: str) -> list[Point]:
    """Every trial that is feasible for ``workload``, with deltas against the baseline."""
    base = baseline_trial(study)
    ref = base.user_attrs.get(f"w:{workload}") if base else None
    ref_runs = (
        ([r["decode_tok_s"] for r in ref["runs"]], [r["ttft_s"] for r in ref["runs"]])
        if ref
        else ([], [])
    )
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        data = t.user_attrs.get(f"w:{workload}")
        if data is None or failure_reason(t, workload):
            continue
        tok, ttft = data["tok_s"], data["ttft_s"]
        runs_tok = [r["decode_tok_s"] for r in data["runs"]]
        runs_ttft = [r["ttft_s"] for r in data["runs"]]
        out.append(
            Point(
                trial=t.number,
                settings=t.user_attrs.get("settings", {}),
                tok_s=tok,
                ttft_s=ttft,
                output_tokens=data["output_tokens"]["median"],
                stop_reasons=data["stop_reasons"],
                baseline=t.user_attrs.get("tag") == "baseline",
                mismatch=t.user_attrs.get("mismatch", {}),
                delta_tok_s_pct=_pct(tok["median"], ref["tok_s"]["median"]) if ref else None,
                delta_ttft_pct=_pct(ttft["median"], ref["ttft_s"]["median"]) if ref else None,
                machine=fingerprint.short_id(m) if (m := t.user_attrs.get("machine")) else None,
                delta_tok_s_ci=_ci(ref_runs[0], runs_tok) if ref else None,
                delta_ttft_ci=_ci(ref_runs[1], runs_ttft) if ref else None,
                output_ratio=t.user_attrs.get(f"output_ratio:{workload}"),
                divergence=data.get("divergence"),
                tag=t.user_attrs.get("tag"),
                runs_tok_s=runs_tok,
                runs_ttft_s=runs_ttft,
            )
        )
    return out


def pareto_front(pts: list[Point]) -> list[Point]:
    """Points no other point beats on both tok/s (higher) and TTFT (lower); fastest first."""

    def dominates(a: Point, b: Point) -> bool:
        at, bt = a.tok_s["median"], b.tok_s["median"]
        af, bf = a.ttft_s["median"], b.ttft_s["median"]
        return at >= bt and af <= bf and (at > bt or af < bf)

    front = [p for p in pts if not any(dominates(q, p) for q in pts)]
    return sorted(front, key=lambda p: -p.tok_s["median"])


def status(study: optuna.Study, workloads: list[str]) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name.lower() for t in trials)
    reasons = Counter(
        r for t in trials if t.state == TrialState.COMPLETE and (r := failure_reason(t)) is not None
    )
    best = {}
    for w in workloads:
        pts = points(study, w)
        if pts:
            p = max(pts, key=lambda p: p.tok_s["median"])
            best[w] = {
                "trial": p.trial,
                "tok_s": p.tok_s["median"],
                "ttft_s": p.ttft_s["median"],
                "delta_tok_s_pct": p.delta_tok_s_pct,
            }
    workers = Counter(str(t.user_attrs.get("worker", "?")) for t in trials)
    machines = Counter(
        fingerprint.short_id(t.user_attrs["machine"]) for t in trials if t.user_attrs.get("machine")
    )
    base = baseline_trial(study)
    return {
        "study": study.study_name,
        "trials": len(trials),
        "states": dict(states),
        "complete": states.get("complete", 0),
        "feasible": states.get("complete", 0) - sum(reasons.values()),
        "infeasible": dict(reasons),
        "baseline_trial": base.number if base else None,
        "best": best,
        "workers": dict(workers),
        "drift_events": study.user_attrs.get("drift_events", []),
        "machines": dict(machines),
    }


def _ci(ref: list[float], runs: list[float]) -> list[float] | None:
    if not ref or not runs:
        return None
    return [round(v * 100, 2) for v in stats.relative_difference(ref, runs).to_list()]


def _pct(value: float, ref: float) -> float | None:
    return round((value - ref) / ref * 100, 2) if ref else None
