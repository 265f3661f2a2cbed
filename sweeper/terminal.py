"""What the terminal shows: the tables and one-line sentences of ``status``, ``pareto``,
``run`` and ``compare``, built from the library's data (no I/O here)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sweeper import compare
from sweeper.fronts import Point
from sweeper.measurement import Spread
from sweeper.plan import NightPlan
from sweeper.recommend import Recommendation, WorkloadFront
from sweeper.stats import Interval

if TYPE_CHECKING:
    import pandas as pd


def status_text(summary: dict[str, Any], url: str) -> str:
    """``sweeper status``: the study, its baseline, the best per workload, workers, warnings."""
    base = summary["baseline_trial"]
    lines = [
        f"study {summary['study']} ({url}): {status_line(summary)}",
        f"baseline: trial {base}" if base is not None else "baseline: not measured yet",
    ]
    lines += [f"best {name}: {best_line(best)}" for name, best in summary["best"].items()]
    lines.append(
        "workers: " + ", ".join(f"{w} ({n} trials)" for w, n in summary["workers"].items())
    )
    lines += [f"warning: {drift_line(event)}" for event in summary["drift_events"]]
    if len(summary["machines"]) > 1:
        mixed = ", ".join(f"{m} ({n} trials)" for m, n in summary["machines"].items())
        lines.append(f"machines (mixed hardware): {mixed}")
    return "\n".join(lines)


def fronts_text(views: Sequence[WorkloadFront], searched: Sequence[str], repeats: int) -> str:
    """``sweeper pareto``: each workload's front as a table, the recommendation marked."""
    blocks = []
    for view in views:
        front, rec = view.front, view.recommendation
        lines = [
            f"{view.workload}: {len(front)} trials on the front "
            f"(median of {repeats} runs [min-max])"
        ]
        if not front:
            lines.append("  no feasible trials yet")
        else:
            table = front_table(front, searched, rec.point.trial if rec else None)
            lines.append(table.to_string(index=False))
            if rec is not None:
                lines.append(f"* recommended: {recommendation_line(rec)}")
        if view.screened:
            best = ", ".join(
                f"{p.trial} ({p.tok_s.median:.1f} tok/s, TTFT {p.ttft_s.median:.3f} s)"
                for p in view.screened_front[:5]
            )
            lines.append(
                f"screened {len(view.screened)} configurations; their front by estimate "
                f"(mean tok/s over the workload's length): trials {best}"
            )
        blocks.append("\n".join(lines))
    legend = (
        "vs base: against the baseline trial, measured at different times (~: within the "
        "repeats' noise); *: recommended; !: measured between two baseline runs that disagree"
    )
    return "\n\n".join([*blocks, legend])


def plan_text(study: str, p: NightPlan) -> str:
    """``sweeper plan``: what each stage costs and what fits the budget."""
    s = p.speeds
    lines = [
        f"plan for {study} ({s.source}: decode {s.decode_tok_s:.1f} tok/s, prompt "
        f"{s.prefill_tok_s:.0f} tok/s, load {s.load_s:.1f} s):",
        f"  one screening: {_duration(p.screening_s)}",
        f"  one full measurement: {_duration(p.full_s)}",
        f"  the confirmation: at most {_duration(p.confirmation_s)}",
    ]
    budget = f"in {_duration(p.timeout_s)}" if p.timeout_s else f"for {p.trials} trials"
    if p.screening_trials:
        lines.append(
            f"  {budget}: {p.screening_trials} configurations screened, up to {p.finalists} "
            "finalists measured in full, then the confirmation"
        )
        if p.ahead is not None:
            lines.append(
                f"  (the finalists and the confirmation's candidates priced at the screened "
                f"speeds of those it would promote now: decode {p.ahead.decode_tok_s:.1f} tok/s, "
                f"{_duration(p.finalist_full_s)} each in full)"
            )
    else:
        lines.append(f"  {budget}: {p.full_measurements} configurations measured in full")
    if p.space_size is not None:
        lines.append(f"  the space holds {p.space_size} configurations")
    lines += [f"warning: {w}" for w in p.warnings]
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "no limit"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def status_line(s: dict[str, Any]) -> str:
    line = f"{s['trials']} trials, {s['complete']} complete, {s['feasible']} feasible"
    if s.get("screened"):
        line += f" ({s['screened']} screened, {s['measured_full']} measured in full"
        if s.get("repeats_answered"):
            line += f", {s['repeats_answered']} repeated settings answered from storage"
        line += ")"
    if s["infeasible"]:
        line += "; infeasible: " + ", ".join(f"{r} {n}" for r, n in s["infeasible"].items())
    others = {k: v for k, v in s["states"].items() if k != "complete"}
    if others:
        line += "; " + ", ".join(f"{k} {v}" for k, v in others.items())
    return line


def best_line(b: dict[str, Any]) -> str:
    """The fastest trial as measured (no gain is claimed here: see the recommendation)."""
    return f"trial {b['trial']}, {b['tok_s']:.2f} tok/s, TTFT {b['ttft_s']:.3f} s"


def drift_line(event: dict[str, Any]) -> str:
    moved = ", ".join(
        f"{w} {v[0]:+.1f}% tok/s [{v[1]:+.1f}%, {v[2]:+.1f}%]"
        for w, v in event["tok_s_change_pct"].items()
    )
    return (
        f"drift: the baseline re-run in trial {event['check_trial']} moved ({moved}); "
        f"trials {event['since_trial'] + 1}-{event['check_trial'] - 1} may be affected"
    )


def recommendation_line(r: Recommendation) -> str:
    which = f"trial {r.point.trial}" + (" (the baseline)" if r.point.baseline else "")
    line = f"{which}, expected {r.expected_s:.2f} s for {r.reference_tokens:.0f} tokens"
    line += f"; {r.claim()}"
    if r.note:
        line += f"; {r.note}"
    return line


def recommendations_text(views: dict[str, WorkloadFront], indent: str = "") -> str:
    """One line per workload: its recommendation and what may be claimed of it."""
    return "\n".join(
        f"{indent}{w}: {recommendation_line(v.recommendation)}"
        for w, v in views.items()
        if v.recommendation
    )


def front_table(
    front: Sequence[Point], searched: Sequence[str], recommended: int | None = None
) -> pd.DataFrame:
    def spread(s: Spread, fmt: Callable[[float], str]) -> str:
        return f"{fmt(s.median)} [{fmt(s.min)}-{fmt(s.max)}]"

    def noisy(v: float | None, ci: Interval | None) -> str:
        """A change whose interval includes zero is marked as noise (~)."""
        if v is None:
            return ""
        within_noise = ci is not None and not ci.excludes_zero()
        return f"{'~' if within_noise else ''}{v:+.1f}%"

    reasons = any(p.reasoning_tokens for p in front)  # a reasoning model: its answer apart
    rows = []
    for p in front:
        row: dict[str, Any] = {
            "trial": f"{p.trial}{' (baseline)' if p.baseline else ''}"
            + (" !" if p.unreliable else "")
            + (" *" if p.trial == recommended else ""),
            "tok/s": spread(p.tok_s, lambda v: f"{v:.2f}"),
            "TTFT s": spread(p.ttft_s, lambda v: f"{v:.3f}"),
            "out tok": f"{p.output_tokens:.0f}",
            **(
                {
                    "think tok": f"{p.reasoning_tokens:.0f}",
                    "answer tok": f"{p.answer_tokens or 0:.0f}",
                    "answer s": spread(p.tta_s, lambda v: f"{v:.2f}") if p.tta_s else "",
                    "expected answer s": f"{p.first_s.median:.2f}",
                }
                if reasons
                else {}
            ),
            "tok/s vs base": noisy(p.delta_tok_s_pct, p.delta_tok_s_ci),
            "TTFT vs base": noisy(p.delta_ttft_pct, p.delta_ttft_ci),
            "out/base": "" if p.output_ratio is None else f"{p.output_ratio:.2f}",
            "stop": ",".join(p.stop_reasons),
        }
        for name in searched:
            row[name] = p.settings.get(name, "default")
        if p.mismatch:
            row["applied differs"] = ", ".join(f"{k}={v[1]}" for k, v in p.mismatch.items())
        rows.append(row)
    import pandas as pd  # here, not above: a trial's worker imports the CLI (start-up time)

    return pd.DataFrame(rows).fillna("")


def comparison_tables(
    rows: Sequence[compare.Row],
    measured: Sequence[compare.ConfigResult],
    repeats: int,
    level: float,
) -> str:
    """The article's table per workload: each configuration's medians, and each one's
    difference from the first with its interval and verdict."""
    fmt = {"tok_s": "{:.2f}", "output_tokens": "{:.0f}", "ttft_s": "{:.3f}"}
    first = measured[0].label
    by_key = {(r.workload, r.label, r.metric): r for r in rows}
    blocks = []
    for w in dict.fromkeys(r.workload for r in rows):
        table = []
        for m in measured:
            row: dict[str, str] = {"config": m.label}
            diff_row: dict[str, str] = {"config": f"  vs {first}"}
            for metric, (label, _) in compare.METRICS.items():
                r, f = by_key[(w, m.label, metric)], fmt[metric]
                row[label] = (
                    f"{f.format(r.median.estimate)} [{f.format(r.median.low)}-"
                    f"{f.format(r.median.high)}]"
                )
                if r.diff is not None:
                    diff_row[label] = (
                        f"{r.diff.estimate:+.1%} [{r.diff.low:+.1%}, "
                        f"{r.diff.high:+.1%}] {r.verdict}"
                    )
            table.append(row)
            if m.label != first:
                table.append(diff_row)
        import pandas as pd

        blocks.append(
            f"{w}: median [{level * 100:g}% interval] of {repeats} interleaved rounds; "
            f"differences vs {first}, paired by round\n"
            + pd.DataFrame(table).to_string(index=False)
        )
    return "\n\n".join(blocks)
