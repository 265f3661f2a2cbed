"""Recommended settings written in forms LM Studio and llama.cpp take as they are."""

from __future__ import annotations

import itertools
import json
import pprint
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from sweeper import records, studyrecord, system
from sweeper.backends import llamaserver
from sweeper.backends import lmstudio as lmstudio_backend
from sweeper.config import StudyConfig
from sweeper.errors import SweeperError
from sweeper.files import write_atomic
from sweeper.recommend import KEEP, Recommendation, per_workload
from sweeper.settings import LoadSettings

FORMATS = ("lmstudio", "model-yaml", "lms", "sdk", "llama-server", "json")
SUFFIX = {
    "lmstudio": ".json",
    "model-yaml": ".model.yaml",
    "lms": ".lms.sh",
    "sdk": ".sdk.py",
    "llama-server": ".llama-server.sh",
    "json": ".sweeper.json",
}


class ExportError(SweeperError):
    """An export could not be written."""


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


def lmstudio_json(p: Preset) -> str:
    doc = {
        "preset": "",
        "operation": {"fields": []},
        "load": {"fields": lmstudio_backend.preset_fields(p.settings, p.n_layers)},
    }
    return json.dumps(doc, indent=2) + "\n"


def lmstudio_install_path(model_key: str) -> Path:
    """Where LM Studio reads a model's default load config (internal, undocumented)."""
    defaults = system.lmstudio_home() / ".internal" / "user-concrete-model-default-config"
    key = Path(model_key)
    if ".." in key.parts or key.is_absolute() or key.drive or key.root:
        raise ExportError(f"{model_key!r} is not an LM Studio model key")
    return defaults / f"{model_key}.json"


def model_yaml(p: Preset) -> str:
    doc = {
        "model": f"sweeper/{p.model.split('/')[-1]}-{p.workload}",
        "base": p.model,
        "config": {"load": {"fields": lmstudio_backend.preset_fields(p.settings, p.n_layers)}},
    }
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    return f"# {p.header()}\n{text}"


def lms_command(p: Preset) -> str:
    s = p.settings
    args = ["lms", "load", p.model]
    if s.gpu_offload is not None:
        args += [
            "--gpu",
            "max" if s.gpu_offload >= 1 else "off" if s.gpu_offload <= 0 else f"{s.gpu_offload:g}",
        ]
    if s.context_length is not None:
        args += ["--context-length", str(s.context_length)]
    args += ["--identifier", f"sweeper-{p.workload}"]
    rest = {k: v for k, v in s.to_dict().items() if k not in ("gpu_offload", "context_length")}
    lines = [f"# {p.header()}", " ".join(args)]
    if rest:
        lines.append(
            "# `lms load` has no flags for: "
            + ", ".join(f"{k}={v}" for k, v in rest.items())
            + "; put them in the model's default config (--format lmstudio)"
        )
    return "\n".join(lines) + "\n"


def sdk_snippet(p: Preset) -> str:
    # the lmstudio backend's own translation: what the snippet says is what a sweep sent
    config, raw = lmstudio_backend.to_config(p.settings, p.n_layers)
    lines = [
        f"# {p.header()}",
        "# client.llm.load_new_instance(MODEL, identifier, config=config, ttl=None)",
        f"config = {pprint.pformat(config, sort_dicts=False)}",
    ]
    if raw:
        lines.append(
            "# Not in SDK 1.5.0's typed config (sweeper sends them as raw load "
            "fields): " + ", ".join(f"{k}={v}" for k, v in raw.items())
        )
    return "\n".join(lines) + "\n"


def llama_server_args(settings: LoadSettings, model: str, n_layers: int | None) -> list[str]:
    """The llama-server command line sweeper measures with: one slot, no fitting, the
    settings as the llama-server backend writes them."""
    try:
        flags = llamaserver.server_args(settings, n_layers)
    except SweeperError as exc:
        raise ExportError(str(exc)) from None
    return ["llama-server", "-m", model, *llamaserver.FIXED_ARGS, *flags]


def llama_server_command(p: Preset) -> str:
    args = llama_server_args(p.settings, p.model, p.n_layers)
    if p.reasoning_effort:
        args += ["--reasoning-effort", p.reasoning_effort]
    return f'#!/bin/sh\n# {p.header()}\nexec {shlex.join(args)} "$@"\n'


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
    "lmstudio": lmstudio_json,
    "model-yaml": model_yaml,
    "lms": lms_command,
    "sdk": sdk_snippet,
    "llama-server": llama_server_command,
    "json": json_doc,
}


def install_lmstudio(p: Preset) -> tuple[Path, Path | None]:
    """Put the preset's load settings into LM Studio's per-model default config: only the load
    keys sweeper measured are replaced, every other field of the file is kept (the user's
    reasoning effort, system prompt, ...); an existing file is backed up first."""
    target = lmstudio_install_path(p.model)
    new = json.loads(lmstudio_json(p))
    backup = None
    if target.exists():
        try:
            doc = json.loads(target.read_text(encoding="utf-8"))
            fields = doc.setdefault("load", {}).setdefault("fields", [])
            kept = [f for f in fields if f.get("key") not in _keys(new)]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ExportError(
                f"{target} is not an LM Studio config this sweeper can merge into; "
                "move it away to install"
            ) from None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        backup = next(
            b
            for i in itertools.count()
            if not (
                b := target.with_name(f"{target.name}.{stamp}{f'-{i}' if i else ''}.bak")
            ).exists()
        )
        shutil.copy2(target, backup)
        doc["load"]["fields"] = kept + new["load"]["fields"]
        new = doc
    # a symlinked config (dotfiles kept elsewhere) stays a link: the file it points to is written
    written = target.resolve() if target.is_symlink() else target
    write_atomic(written, json.dumps(new, indent=2) + "\n", force=True)
    return target, backup


def undo_install(target: Path, backup: Path | None) -> None:
    """Put back what ``install_lmstudio`` replaced (no backup: there was no file)."""
    if backup is None:
        target.unlink(missing_ok=True)
        return
    shutil.copy2(backup, target)
    backup.unlink()


def _keys(doc: dict[str, Any]) -> set[str]:
    return {f["key"] for f in doc["load"]["fields"]}


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
    local = config.backend in ("llama.cpp", "llama-server")
    model = _model_path(config) if local else config.model
    effort = config.sampling.reasoning_effort
    return Preset(config.name, model, config.backend, rec, layers, effort)


def _model_path(config: StudyConfig) -> str:
    from sweeper.backends.llamacpp import LlamaCppBackend

    try:
        return LlamaCppBackend.resolve_model(config.model, config.base_dir)
    except SweeperError:
        return config.model


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
