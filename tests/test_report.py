"""The HTML report: its numbers (data step), and once, the page in headless Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import WriteStudy, chromium_path, run_fake
from fake_backend import FAKE_OOM_CONTEXT
from sweeper.cli import cli
from sweeper.pareto import pareto_figure
from sweeper.report import report_data

ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"


def test_report_data(write_study: WriteStudy) -> None:
    path = write_study(
        **{"context_length = [2048, 4096]": f"context_length = [2048, {FAKE_OOM_CONTEXT}]"}
    )
    config, study = run_fake(path, trials=8)
    data = report_data(study, config, "sqlite:///x.db")
    assert [v.workload for v in data.workloads] == ["short", "long"]
    short = data.workloads[0]
    oom = [t.number for t in study.trials if t.user_attrs.get("failure_reason") == "oom"]
    assert oom and sorted(i.trial for i in short.infeasible) == oom
    assert all(i.reason == "oom" and i.tok_s is None for i in short.infeasible)
    copies = {t.number for t in study.trials if "duplicate_of" in t.user_attrs}
    assert {p.trial for p in short.points} | set(oom) | copies == {t.number for t in study.trials}
    assert short.recommendation is not None
    assert short.recommendation.point.trial in {p.trial for p in short.front}
    assert data.counts["oom"] == len(oom)
    assert data.counts["feasible"] == 8 - len(oom)

    fig = pareto_figure(short)
    names = [trace.name for trace in fig.data]
    assert names[:2] == ["dominated", "Pareto front"] or names[0] == "Pareto front"
    assert "failed (not measured)" in names and "recommended" in names and "baseline" in names
    front_trace = next(t for t in fig.data if t.name == "Pareto front")
    assert len(front_trace.x) == len(short.front)


def test_the_report_renders_in_chromium(write_study: WriteStudy, tmp_path: Path) -> None:
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("no chromium on this machine (apt-get install chromium); CI installs it")
    from playwright.sync_api import sync_playwright

    path = write_study()
    run_fake(path, trials=6)
    out = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["report", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{out}\n"
    assert "<script src=" not in out.read_text()  # self-contained: plotly.js is inlined

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1250, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(out.as_uri())
        page.wait_for_selector(".pareto .main-svg")
        plots = page.locator(".pareto .js-plotly-plot")
        assert plots.count() == 2  # one Pareto plot per workload
        assert page.locator("#workload-short .pareto .scatterlayer .trace").count() >= 3
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator(".pareto").first.screenshot(path=str(ARTIFACTS / "report-front.png"))
        browser.close()
    assert errors == []
