"""The HTML report's drawing step: one self-contained page (plotly.js inlined, opens offline)
drawn from ``report.report_data`` alone."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import plotly.graph_objects as go
import plotly.offline

from sweeper import fingerprint
from sweeper.config import StudyConfig
from sweeper.files import write_atomic
from sweeper.pareto import pareto_figure
from sweeper.report import ReportData, WorkloadView, importance_note, report_data


def _figure_html(fig: go.Figure) -> str:
    return str(fig.to_html(full_html=False, include_plotlyjs=False))


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    return str(
        pd.DataFrame(rows).fillna("").to_html(index=False, escape=True, border=0, classes="table")
    )


def _front_rows(view: WorkloadView) -> list[dict[str, Any]]:
    rec = view.recommendation.point.trial if view.recommendation else None
    mixed = len({p.machine for p in view.points}) > 1  # mixed hardware: say which ran what
    rows = []
    for p in view.front:
        mark = (" (recommended)" if p.trial == rec else "") + (
            " (unreliable: the baseline moved around it)" if p.unreliable else ""
        )
        rows.append(
            {
                "trial": f"{p.trial}{' (baseline)' if p.baseline else ''}{mark}",
                "tok/s median [min-max]": f"{p.tok_s.median:.2f} [{p.tok_s.min:.2f}-"
                f"{p.tok_s.max:.2f}]",
                "TTFT s": f"{p.ttft_s.median:.3f} [{p.ttft_s.min:.3f}-{p.ttft_s.max:.3f}]",
                "output tokens": f"{p.output_tokens:.0f}",
                **(
                    {
                        "reasoning tokens": f"{p.reasoning_tokens:.0f}",
                        "answer tokens": f"{p.answer_tokens or 0:.0f}",
                        "time to answer s": f"{p.tta_s.median:.2f}" if p.tta_s else "",
                    }
                    if p.reasoning_tokens
                    else {}
                ),
                "Δ tok/s": "" if p.delta_tok_s_pct is None else f"{p.delta_tok_s_pct:+.1f}%",
                **({"machine": p.machine} if mixed else {}),
                **p.settings,
            }
        )
    return rows


def _importance_figure(view: WorkloadView) -> go.Figure | None:
    if not any(view.importances.values()):
        return None
    fig = go.Figure()
    for label, imp in view.importances.items():
        fig.add_trace(go.Bar(y=list(imp), x=list(imp.values()), name=label, orientation="h"))
    fig.update_layout(
        title=f"{view.workload}: parameter importance (PED-ANOVA, feasible trials)",
        barmode="group",
        template="plotly_white",
        height=360,
        xaxis_title="importance",
    )
    return fig


def history_figure(view: WorkloadView) -> go.Figure:
    """Each feasible trial's tok/s in the order the trials ran, and the best so far."""
    trials = [t for t, _ in view.history]
    values = [v for _, v in view.history]
    best = [max(values[: i + 1]) for i in range(len(values))]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=trials, y=values, mode="markers", name=f"{view.workload} tok/s"))
    fig.add_trace(go.Scatter(x=trials, y=best, mode="lines", name="best so far"))
    fig.update_layout(
        title=f"{view.workload}: optimization history (tok/s)",
        xaxis_title="trial",
        yaxis_title="decode tok/s",
        template="plotly_white",
        height=360,
    )
    return fig


def render(data: ReportData) -> str:
    parts = [
        f"<h1>sweeper report: {html.escape(data.study)}</h1>",
        f"<p>storage {html.escape(data.storage)}; trials: "
        + ", ".join(f"{k} {v}" for k, v in sorted(data.counts.items()))
        + "</p>",
    ]
    for view in data.workloads:
        parts.append(f'<section class="workload" id="workload-{html.escape(view.workload)}">')
        parts.append(f"<h2>Workload {html.escape(view.workload)}</h2>")
        r = view.recommendation
        if r is not None:
            note = f" {html.escape(r.note)}." if r.note else ""
            parts.append(
                f'<p class="recommendation {r.status}"><b>Recommended: trial {r.point.trial}'
                f"{' (the baseline)' if r.point.baseline else ''}</b>, expected "
                f"{r.expected_s:.2f} s for {r.reference_tokens:.0f} tokens; "
                f"{html.escape(r.claim())}.{note}</p>"
            )
        parts.append(f'<div class="pareto">{_figure_html(pareto_figure(view))}</div>')
        parts.append("<h3>Pareto front</h3>" + _table(_front_rows(view)))
        imp = _importance_figure(view)
        if imp is not None:
            parts.append(_figure_html(imp))
        else:
            parts.append(f"<p>{importance_note(len(view.points))}</p>")
        if view.history:
            parts.append(_figure_html(history_figure(view)))
        parts.append(
            "<h3>Infeasible trials</h3>"
            + _table(
                [
                    {"trial": i.trial, "reason": i.reason, "detail": i.detail[:300], **i.settings}
                    for i in view.infeasible
                ]
            )
        )
        parts.append("</section>")
    parts.append(
        "<h2>Drift</h2>"
        + (
            _table(
                [
                    {
                        "baseline re-run": e["check_trial"],
                        "trials that may be affected": (
                            f"{e['since_trial'] + 1}-{e['check_trial'] - 1}"
                        ),
                        **{
                            f"{w} tok/s change %": f"{v[0]:+.1f} [{v[1]:+.1f}, {v[2]:+.1f}]"
                            for w, v in e["tok_s_change_pct"].items()
                        },
                    }
                    for e in data.drift
                ]
            )
            if data.drift
            else "<p>The baseline re-runs stayed within their noise (or none ran yet).</p>"
        )
    )
    parts.append("<h2>Applied differs from requested</h2>" + _table(data.mismatches))
    machines = [{"id": fingerprint.short_id(m), **_flat(m)} for m in data.machines]
    parts.append("<h2>Machines</h2>" + _table(machines))
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>sweeper: {html.escape(data.study)}</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
        ".table{border-collapse:collapse;font-size:13px}.table td,.table th{padding:3px 8px;"
        "border-bottom:1px solid #ddd}</style>"
        f"<script>{plotly.offline.get_plotlyjs()}</script></head><body>{body}</body></html>"
    )


def _flat(m: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in m.items()}


def write_report(
    study: optuna.Study, config: StudyConfig, storage: str, path: Path, force: bool = False
) -> None:
    """Render the report of ``study`` to ``path`` (``storage``: a redacted URL to show)."""
    write_atomic(path, render(report_data(study, config, storage)), force=force)
