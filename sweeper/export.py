"""Recommended settings as presets: which workload's settings, from which trial, and with what
claim; written in every format a backend takes (each format is the backend's own) and as
sweeper's own JSON record."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna

from sweeper import records, studyrecord
from sweeper.backends import PRESET_FORMATS, backend_class, render_preset
from sweeper.config import StudyConfig
from sweeper.errors import ExportError as ExportError
from sweeper.files import write_atomic
from sweeper.recommend import KEEP, Recommendation, per_workload
from sweeper.settings import LoadSettings

FORMATS = (*PRESET_FORMATS, "json")
SUFFIX = {fmt: suffix for fmt, (_, suffix) in PRESET_FORMATS.items()} | {"json": ".sweeper.json"}


class NothingToExport(ExportError):
    """The recommendation is to keep the baseline: a preset would change nothing for the
    better."""


@dataclass(frozen=True)
class Preset:
    """What is exported: the recommended settings of one workload and where they came from."""

    study: str
    model: str
    backend: str
    recommendation: Recommendation
    n_layers: int | None
    #: the study's reasoning effort: measured with it, so the preset holds only with it
    reasoning_effort: str | None = None

    @property
    def settings(self) -> LoadSettings:
        return LoadSettings(**self.recommendation.point.settings)

    @property
    def workload(self) -> str:
        return self.recommendation.workload

    def header(self) -> str:
        r = self.recommendation
        return (
            f"sweeper: study {self.study}, workload {self.workload}, trial {r.point.trial}: "
            f"{r.point.tok_s.median:.2f} tok/s, TTFT {r.point.ttft_s.median:.3f} s; {r.claim()}"
            + (
                f"; measured with reasoning effort {self.reasoning_effort}"
                if self.reasoning_effort
                else ""
            )
        )


def json_doc(p: Preset) -> str:
    doc = {
        "study": p.study,
        "backend": p.backend,
        "model": p.model,
        "recommendation": p.recommendation.to_dict(),
    }
    if p.reasoning_effort:
        doc["reasoning_effort"] = p.reasoning_effort
    if p.recommendation.baseline is not None:
        doc["baseline"] = p.recommendation.baseline.to_dict()
    return json.dumps(doc, indent=2) + "\n"


RENDER: dict[str, Callable[[Preset], str]] = {
    **{fmt: functools.partial(render_preset, fmt) for fmt in PRESET_FORMATS},
    "json": json_doc,
}


def preset_for(study: optuna.Study, config: StudyConfig, workload: str) -> Preset:
    """The recommended settings of ``workload``, ready to render."""
    recs = records.load(study)
    rec = per_workload(recs, config, workload, studyrecord.confirmations(study))[
        workload
    ].recommendation
    if rec is None:
        raise ExportError(
            f"no feasible trial for workload {workload!r} yet; "
            f"run `sweeper run {config.path}` first"
        )
    if rec.status == KEEP:
        raise NothingToExport(f"{workload}: {rec.claim()}; nothing to export")
    layers = config.model_layers or next((r.model_layers for r in recs if r.model_layers), None)
    model = backend_class(config.backend).model_file(config.model, config.base_dir)
    effort = config.sampling.reasoning_effort
    return Preset(config.name, model, config.backend, rec, layers, effort)


def export_all(
    study: optuna.Study, config: StudyConfig, storage: str, out: Path, force: bool
) -> tuple[list[Path], list[str]]:
    """Every workload's preset in every format, and the HTML report, into ``out``; and why a
    workload has no preset (keep your settings)."""
    written, skipped = [], []
    for w in config.workloads:
        try:
            preset = preset_for(study, config, w.name)
        except NothingToExport as exc:
            skipped.append(str(exc))
            continue
        for fmt in FORMATS:
            path = out / f"{config.name}-{w.name}{SUFFIX[fmt]}"
            write_atomic(path, RENDER[fmt](preset), force=force)
            written.append(path)
    report_path = out / f"{config.name}-report.html"
    from sweeper import report_html  # pandas and plotly: only for a report (start-up time)

    report_html.write_report(study, config, storage, report_path, force)
    return [*written, report_path], skipped
