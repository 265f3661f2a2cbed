"""The Pareto figure of one workload, drawn once for the HTML report and the service's results
page: decode tok/s across, the wait (the second objective) up; the front, the dominated and
infeasible trials, the baseline and the recommendation. The data step is ``report``'s
``WorkloadView``."""

from __future__ import annotations

import html

import plotly.graph_objects as go

from sweeper.fronts import Point
from sweeper.report import Infeasible, WorkloadView

#: the second objective's axis (see objectives.py)
WAIT = "time to first token (a reasoning model: to its answer)"
FADED = 0.3


def pareto_figure(view: WorkloadView) -> go.Figure:
    fig = go.Figure()
    on_front = {p.trial for p in view.front}
    rec = view.recommendation.point.trial if view.recommendation else None
    for label, pts, opacity in (
        ("dominated", [p for p in view.points if p.trial not in on_front], FADED),
        ("Pareto front", sorted(view.front, key=lambda p: p.first_s.median), 1.0),
    ):
        if not pts:
            continue
        fig.add_trace(
            go.Scatter(
                x=[p.tok_s.median for p in pts],
                y=[p.first_s.median for p in pts],
                mode="markers+lines" if label == "Pareto front" else "markers",
                name=label,
                opacity=opacity,
                error_x={
                    "type": "data",
                    "symmetric": False,
                    "array": [p.tok_s.max - p.tok_s.median for p in pts],
                    "arrayminus": [p.tok_s.median - p.tok_s.min for p in pts],
                },
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [p.first_s.max - p.first_s.median for p in pts],
                    "arrayminus": [p.first_s.median - p.first_s.min for p in pts],
                },
                marker={
                    "size": 10,
                    "color": [p.output_tokens for p in pts],
                    "colorscale": "Viridis",
                    "showscale": label == "Pareto front",
                    "colorbar": {"title": "output tokens"},
                },
                text=[_hover(p) for p in pts],
                hoverinfo="text",
            )
        )
    measured = [i for i in view.infeasible if i.tok_s is not None]
    failed = [i for i in view.infeasible if i.tok_s is None]
    if measured:
        fig.add_trace(
            go.Scatter(
                x=[i.tok_s for i in measured],
                y=[i.ttft_s for i in measured],
                mode="markers",
                name="infeasible (measured)",
                opacity=FADED,
                marker={"color": "grey", "size": 9},
                text=[_hover_infeasible(i) for i in measured],
                hoverinfo="text",
            )
        )
    if failed:
        fig.add_trace(
            go.Scatter(
                x=[0.0] * len(failed),
                y=[0.0] * len(failed),
                mode="markers",
                name="failed (not measured)",
                opacity=FADED,
                marker={"color": "grey", "symbol": "x", "size": 9},
                text=[_hover_infeasible(i) for i in failed],
                hoverinfo="text",
            )
        )
    for p, label, symbol in (
        (next((p for p in view.points if p.baseline), None), "baseline", "star"),
        (next((p for p in view.points if p.trial == rec), None), "recommended", "diamond"),
    ):
        if p is not None:
            fig.add_trace(
                go.Scatter(
                    x=[p.tok_s.median],
                    y=[p.first_s.median],
                    mode="markers",
                    name=label,
                    marker={
                        "symbol": symbol,
                        "size": 18,
                        "color": "rgba(0,0,0,0)",
                        "line": {
                            "width": 2,
                            "color": "crimson" if label == "recommended" else "black",
                        },
                    },
                    text=[_hover(p)],
                    hoverinfo="text",
                )
            )
    fig.update_layout(
        title=f"{view.workload}: decode tok/s vs {WAIT} (median of the repeats; bars: min-max)",
        xaxis_title="decode tok/s (higher is better)",
        yaxis_title=f"{WAIT}, s (lower is better)",
        template="plotly_white",
        height=520,
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def _hover(p: Point) -> str:
    settings = "<br>".join(f"{k} = {v}" for k, v in p.settings.items())
    return (
        f"trial {p.trial}{' (baseline)' if p.baseline else ''}<br>"
        f"{p.tok_s.median:.2f} tok/s [{p.tok_s.min:.2f}-{p.tok_s.max:.2f}]<br>"
        f"TTFT {p.ttft_s.median:.3f} s<br>{p.output_tokens:.0f} output tokens<br>"
        f"{settings}"
    )


def _hover_infeasible(i: Infeasible) -> str:
    return f"trial {i.trial}: {i.reason}<br>{html.escape(i.detail[:200])}"
