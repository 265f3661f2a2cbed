"""The recommended configuration per workload, and its gain over the baseline.

Rule (default ``completion``): among the trials on the workload's front that meet the study's
limits, the one with the lowest expected completion time for the workload's reference output,
TTFT + reference tokens / tok/s (reference tokens: the baseline's median output, else the cap).
Ties (within 1%) go to the configuration closest to the baseline (fewest settings changed).
A candidate whose lead over the baseline is within the noise of the repeats (the 95% interval
of the difference includes zero) is not recommended over the baseline.
Rule ``weighted``: the highest ``tok_s_weight x tok/s / baseline tok/s -
ttft_weight x TTFT / baseline TTFT``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sweeper import stats
from sweeper.config import Rule, StudyConfig
from sweeper.fronts import Point, pareto_front, points
from sweeper.records import TrialRecord


@dataclass(frozen=True)
class Recommendation:
    workload: str
    point: Point
    baseline: Point | None
    reference_tokens: float
    expected_s: float
    #: change against the baseline, %: estimate and 95% interval (bootstrap of the repeats)
    gain_tok_s_pct: stats.Interval | None
    gain_ttft_pct: stats.Interval | None
    note: str | None = None

    def gain_text(self) -> str:
        """The tok/s change against the baseline, in words ("" without a baseline)."""
        g = self.gain_tok_s_pct
        if g is None:
            return ""
        return (
            f"{g.estimate:+.1f}% tok/s vs baseline "
            f"({stats.LEVEL:.0%} interval {g.low:+.1f}% to {g.high:+.1f}%)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "trial": self.point.trial,
            "settings": self.point.settings,
            "tok_s": self.point.tok_s.to_dict(),
            "ttft_s": self.point.ttft_s.to_dict(),
            "output_tokens": self.point.output_tokens,
            "reference_tokens": self.reference_tokens,
            "expected_completion_s": self.expected_s,
            "baseline_trial": self.baseline.trial if self.baseline else None,
            "gain_tok_s_pct": self.gain_tok_s_pct.to_list() if self.gain_tok_s_pct else None,
            "gain_ttft_pct": self.gain_ttft_pct.to_list() if self.gain_ttft_pct else None,
            "note": self.note,
        }


def expected_completion_s(p: Point, tokens: float) -> float:
    tok_s = p.tok_s.median
    return p.ttft_s.median + (tokens / tok_s if tok_s > 0 else float("inf"))


def recommend(
    workload: str, pts: Sequence[Point], max_tokens: int, rule: Rule | None = None
) -> Recommendation | None:
    """The recommendation among ``pts`` (``fronts.points`` of the workload)."""
    rule = rule or Rule()
    base = next((p for p in pts if p.baseline), None)
    front = [p for p in pareto_front(pts) if _within(p, rule)]
    if not front:
        return None
    reference = base.output_tokens if base else float(max_tokens)
    base_settings = base.settings if base else {}

    def changed(p: Point) -> int:
        keys = set(p.settings) | set(base_settings)
        return sum(p.settings.get(k) != base_settings.get(k) for k in keys)

    if rule.kind == "weighted" and base is not None:

        def score(p: Point) -> float:
            return -(
                rule.tok_s_weight * p.tok_s.median / base.tok_s.median
                - rule.ttft_weight * p.ttft_s.median / base.ttft_s.median
            )
    else:

        def score(p: Point) -> float:
            return expected_completion_s(p, reference)

    best_score = min(score(p) for p in front)
    tied = [p for p in front if score(p) - best_score <= abs(best_score) * 0.01 + 1e-12]
    chosen = min(tied, key=lambda p: (changed(p), score(p)))
    note = None
    if (
        base is not None
        and chosen is not base
        and not _beats_baseline(chosen, base, reference, rule)
    ):
        note = (
            f"trial {chosen.trial} looked best, but its lead over the baseline is within "
            "the noise of the repeats: the baseline is kept"
        )
        chosen = base
    return Recommendation(
        workload=workload,
        point=chosen,
        baseline=base,
        reference_tokens=reference,
        expected_s=expected_completion_s(chosen, reference),
        gain_tok_s_pct=chosen.delta_tok_s_ci,
        gain_ttft_pct=chosen.delta_ttft_ci,
        note=note,
    )


def _beats_baseline(p: Point, base: Point, reference: float, rule: Rule) -> bool:
    """Is ``p`` better than the baseline by more than the noise, on the rule's own terms?"""
    if rule.kind == "weighted":
        tok, ttft = p.delta_tok_s_ci, p.delta_ttft_ci
        return bool((tok and tok.above_zero()) or (ttft and ttft.below_zero()))

    def completion(tok_s: list[float], ttft: list[float]) -> list[float]:
        return [f + reference / t for t, f in zip(tok_s, ttft, strict=True) if t > 0]

    a = completion(base.runs_tok_s, base.runs_ttft_s)
    b = completion(p.runs_tok_s, p.runs_ttft_s)
    if not a or not b:
        return False
    return stats.relative_difference(a, b).below_zero()


def _within(p: Point, rule: Rule) -> bool:
    if rule.ttft_max is not None and p.ttft_s.median > rule.ttft_max:
        return False
    return not (rule.tok_s_min is not None and p.tok_s.median < rule.tok_s_min)


@dataclass(frozen=True)
class WorkloadFront:
    """One workload's feasible points, its front and its recommendation."""

    workload: str
    points: list[Point]
    front: list[Point]
    recommendation: Recommendation | None

    def to_dict(self) -> dict[str, Any]:
        rec = self.recommendation
        return {
            "front": [p.to_dict() for p in self.front],
            "recommended": rec.to_dict() if rec else None,
        }


def per_workload(
    recs: Sequence[TrialRecord], config: StudyConfig, only: str | None = None
) -> dict[str, WorkloadFront]:
    """Every workload's (or ``only`` one's) front and recommendation."""
    out = {}
    for w in config.workloads:
        if only not in (None, w.name):
            continue
        pts = points(recs, w.name)
        rec = recommend(w.name, pts, w.max_tokens, config.recommend)
        out[w.name] = WorkloadFront(w.name, pts, pareto_front(pts), rec)
    return out
