"""The recommended configuration per workload, and its gain over the baseline.

Rule (default ``completion``): among the trials on the workload's front that meet the study's
limits, the one with the lowest expected completion time for the workload's reference output,
TTFT + reference tokens / tok/s (reference tokens: the baseline's median output, else the cap).
Ties (within 1%) go to the configuration closest to the baseline (fewest settings changed).
Rule ``weighted``: the highest ``tok_s_weight x tok/s / baseline tok/s -
ttft_weight x TTFT / baseline TTFT``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from sweeper.results import Point, pareto_front, points
from sweeper.study import baseline_trial


@dataclass(frozen=True)
class Rule:
    kind: str = "completion"  # or "weighted"
    ttft_max: float | None = None
    tok_s_min: float | None = None
    tok_s_weight: float = 1.0
    ttft_weight: float = 1.0


@dataclass(frozen=True)
class Recommendation:
    workload: str
    point: Point
    baseline: Point | None
    reference_tokens: float
    expected_s: float
    #: tok/s change against the baseline, % : median, and the range its repeats allow
    gain_tok_s_pct: tuple[float, float, float] | None
    gain_ttft_pct: tuple[float, float, float] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "trial": self.point.trial,
            "settings": self.point.settings,
            "tok_s": self.point.tok_s,
            "ttft_s": self.point.ttft_s,
            "output_tokens": self.point.output_tokens,
            "reference_tokens": self.reference_tokens,
            "expected_completion_s": self.expected_s,
            "baseline_trial": self.baseline.trial if self.baseline else None,
            "gain_tok_s_pct": self.gain_tok_s_pct,
            "gain_ttft_pct": self.gain_ttft_pct,
        }


def expected_completion_s(p: Point, tokens: float) -> float:
    tok_s = p.tok_s["median"]
    return p.ttft_s["median"] + (tokens / tok_s if tok_s > 0 else float("inf"))


def recommend(
    study: optuna.Study, workload: str, max_tokens: int, rule: Rule | None = None
) -> Recommendation | None:
    rule = rule or Rule()
    pts = points(study, workload)
    base = next((p for p in pts if p.baseline), None)
    front = [p for p in pareto_front(pts) if _within(p, rule)]
    if not front:
        return None
    base_trial = baseline_trial(study)
    reference = base.output_tokens if base else float(max_tokens)
    base_settings = base_trial.user_attrs.get("settings", {}) if base_trial else {}

    def changed(p: Point) -> int:
        keys = set(p.settings) | set(base_settings)
        return sum(p.settings.get(k) != base_settings.get(k) for k in keys)

    if rule.kind == "weighted" and base is not None:

        def score(p: Point) -> float:
            return -(
                rule.tok_s_weight * p.tok_s["median"] / base.tok_s["median"]
                - rule.ttft_weight * p.ttft_s["median"] / base.ttft_s["median"]
            )
    else:

        def score(p: Point) -> float:
            return expected_completion_s(p, reference)

    best_score = min(score(p) for p in front)
    tied = [p for p in front if score(p) - best_score <= abs(best_score) * 0.01 + 1e-12]
    chosen = min(tied, key=lambda p: (changed(p), score(p)))
    return Recommendation(
        workload=workload,
        point=chosen,
        baseline=base,
        reference_tokens=reference,
        expected_s=expected_completion_s(chosen, reference),
        gain_tok_s_pct=_gain(chosen.tok_s, base.tok_s) if base else None,
        gain_ttft_pct=_gain(chosen.ttft_s, base.ttft_s) if base else None,
    )


def _within(p: Point, rule: Rule) -> bool:
    if rule.ttft_max is not None and p.ttft_s["median"] > rule.ttft_max:
        return False
    return not (rule.tok_s_min is not None and p.tok_s["median"] < rule.tok_s_min)


def _gain(new: dict[str, float], old: dict[str, float]) -> tuple[float, float, float]:
    """Median change and the widest/narrowest change the repeats' min-max ranges allow."""
    ref = old["median"]

    def pct(v: float) -> float:
        return round((v - ref) / ref * 100, 2) if ref else 0.0

    low = (new["min"] - old["max"]) / old["max"] * 100 if old["max"] else 0.0
    high = (new["max"] - old["min"]) / old["min"] * 100 if old["min"] else 0.0
    return (pct(new["median"]), round(low, 2), round(high, 2))
