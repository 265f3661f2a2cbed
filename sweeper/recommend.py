"""The recommended configuration per workload, and whether its gain over the baseline is
confirmed.

Rule (default ``completion``): among the trials on the workload's front that meet the study's
limits, the one with the lowest expected completion time for the workload's reference output,
TTFT + reference tokens / tok/s (reference tokens: the baseline's median output, else the cap).
Ties (within 1%) go to the configuration closest to the baseline (fewest settings changed).
Rule ``weighted``: the highest ``tok_s_weight x tok/s / baseline tok/s -
ttft_weight x TTFT / baseline TTFT``.

A gain is only claimed from a confirmation (``confirm.py``: the candidate re-measured side by
side with the baseline). Until then the recommendation is "unconfirmed (measured at different
times)" and shows no interval; when the confirmation finds no detectable gain, or no candidate
beat the baseline at all, it is the baseline: "keep your settings".
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import optuna

from sweeper import records, stats, studyrecord
from sweeper.config import Rule, StudyConfig
from sweeper.fronts import Point, pareto_front, points
from sweeper.measurement import CandidateResult, Confirmation
from sweeper.records import SCREEN, TrialRecord

CONFIRMED, UNCONFIRMED, KEEP = "confirmed", "unconfirmed", "keep"


@dataclass(frozen=True)
class Recommendation:
    workload: str
    #: the configuration to use: the baseline's when ``status`` is "keep"
    point: Point
    baseline: Point | None
    reference_tokens: float
    expected_s: float
    #: "confirmed" (a gain measured side by side), "unconfirmed", or "keep" (the baseline)
    status: str = UNCONFIRMED
    confirmation: Confirmation | None = None
    note: str | None = None

    @property
    def result(self) -> CandidateResult | None:
        """The confirmation's measurement of the recommended configuration."""
        c = self.confirmation
        return c.candidate(self.point.trial) if c and self.status == CONFIRMED else None

    @property
    def gain_tok_s_pct(self) -> stats.Interval | None:
        r = self.result
        return stats.Interval(*r.tok_s_pct) if r else None

    @property
    def gain_ttft_pct(self) -> stats.Interval | None:
        r = self.result
        return stats.Interval(*r.ttft_pct) if r else None

    def claim(self) -> str:
        """What may be said about this recommendation against the baseline, in words."""
        c = self.confirmation
        r = self.result
        if self.status == CONFIRMED and c is not None and r is not None:

            def pct(v: list[float]) -> str:
                return f"{v[0]:+.1f}% ({v[1]:+.1f}% to {v[2]:+.1f}%)"

            return (
                f"{pct(r.tok_s_pct)} tok/s vs baseline, TTFT {pct(r.ttft_pct)}, time for "
                f"{c.reference_tokens:.0f} tokens {pct(r.completion_pct)} "
                f"({c.level:.0%} intervals), confirmed side by side in {c.rounds} interleaved "
                f"rounds on {_when(c.when)}"
            )
        if self.status == KEEP:
            if c is None:
                return "keep your settings: no candidate beat them"
            return (
                "keep your settings: no candidate beat them by more than the noise "
                f"({c.rounds} interleaved rounds on {_when(c.when)})"
            )
        return "unconfirmed (measured at different times)"

    def to_dict(self) -> dict[str, Any]:
        c = self.confirmation
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
            "status": self.status,
            "confirmed": self.status == CONFIRMED,
            "claim": self.claim(),
            "rounds": c.rounds if c else None,
            "confirmed_at": c.when if c and self.status == CONFIRMED else None,
            "gain_tok_s_pct": self.gain_tok_s_pct.to_list() if self.gain_tok_s_pct else None,
            "gain_ttft_pct": self.gain_ttft_pct.to_list() if self.gain_ttft_pct else None,
            "confirmation": c.to_dict() if c else None,
            "note": self.note,
        }


def _when(iso: str) -> str:
    return datetime.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")


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
    keep = base is not None and chosen.settings == base.settings
    return Recommendation(
        workload=workload,
        point=chosen,
        baseline=base,
        reference_tokens=reference,
        expected_s=expected_completion_s(chosen, reference),
        status=KEEP if keep else UNCONFIRMED,
        note=_unreliable(chosen),
    )


def settle(
    rec: Recommendation, pts: Sequence[Point], confirmations: Sequence[Confirmation]
) -> Recommendation:
    """The recommendation as the latest confirmation of it says: confirmed (possibly a
    runner-up that was measured faster), or the baseline kept. A confirmation applies while the
    recommended configuration is among those it measured against the same baseline."""
    base = rec.baseline
    if base is None or rec.status == KEEP:
        return rec
    c = next(
        (
            c
            for c in reversed(confirmations)
            if c.workload == rec.workload
            and c.baseline_settings == base.settings
            and any(x.settings == rec.point.settings for x in c.candidates)
        ),
        None,
    )
    if c is None:
        return rec
    chosen = c.candidate(c.chosen) if c.chosen is not None else None
    point = next((p for p in pts if chosen and p.trial == chosen.trial), None)
    if chosen is None or point is None:
        shorter = [x.trial for x in c.candidates if x.verdict == "shorter output"]
        note = (
            f"trial {', '.join(map(str, shorter))} was only faster by writing less"
            if shorter
            else None
        )
        return replace(
            rec,
            point=base,
            status=KEEP,
            confirmation=c,
            note=note,
            expected_s=expected_completion_s(base, rec.reference_tokens),
        )
    return replace(
        rec,
        point=point,
        status=CONFIRMED,
        confirmation=c,
        expected_s=expected_completion_s(point, rec.reference_tokens),
        note=None,
    )


def _unreliable(p: Point) -> str | None:
    if not p.unreliable:
        return None
    return "measured between two baseline runs that disagree: the machine changed under it"


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
    #: the screening's estimates (a staged sweep), and their front
    screened: list[Point] = field(default_factory=list)

    @property
    def screened_front(self) -> list[Point]:
        return pareto_front(self.screened)

    def to_dict(self) -> dict[str, Any]:
        rec = self.recommendation
        return {
            "front": [p.to_dict() for p in self.front],
            "recommended": rec.to_dict() if rec else None,
            "screened": len(self.screened),
            "screened_front": [p.to_dict() for p in self.screened_front],
        }


def per_workload(
    recs: Sequence[TrialRecord],
    config: StudyConfig,
    only: str | None = None,
    confirmations: Sequence[Confirmation] = (),
) -> dict[str, WorkloadFront]:
    """Every workload's (or ``only`` one's) front and recommendation, as confirmed."""
    out = {}
    for w in config.workloads:
        if only not in (None, w.name):
            continue
        pts = points(recs, w.name)
        screened = points(recs, w.name, SCREEN)
        rec = recommend(w.name, pts, w.max_tokens, config.recommend)
        if rec is not None and rec.status == KEEP and len(screened) > 1 and len(pts) == 1:
            # screened, no finalist measured in full yet: the screening's best, said so
            rec = recommend(w.name, screened, w.max_tokens, config.recommend)
            if rec is not None and rec.status != KEEP:
                rec = replace(rec, note="a screening estimate: not measured in full yet")
        if rec is not None:
            rec = settle(rec, [*pts, *screened], confirmations)
        if rec is not None and rec.status == CONFIRMED:  # measured again: reliable now
            pts = [replace(p, unreliable=False) if p.trial == rec.point.trial else p for p in pts]
            rec = replace(rec, point=replace(rec.point, unreliable=False))
        out[w.name] = WorkloadFront(w.name, pts, pareto_front(pts), rec, screened)
    return out


def for_study(
    study: optuna.Study, config: StudyConfig, only: str | None = None
) -> dict[str, WorkloadFront]:
    """``per_workload`` over the study's trials and confirmations, as stored."""
    return per_workload(records.load(study), config, only, studyrecord.confirmations(study))
