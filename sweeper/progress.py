"""The sweep's progress bar on stderr (tqdm): trials done, ETA, the running trial, best so far."""

from __future__ import annotations

import json
import sys
from typing import Any

import optuna
from tqdm import tqdm

from sweeper import records
from sweeper.config import StudyConfig
from sweeper.fronts import points
from sweeper.measurement import Run


class ProgressBar:
    """A tqdm bar on stderr: trials done, ETA, what the current trial is doing, best so far."""

    def __init__(self, config: StudyConfig, total: int = 0) -> None:
        self.config = config
        self.stage_name = ""
        self.bar = tqdm(
            total=total,
            unit="trial",
            file=sys.stderr,
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}",
        )
        self.best: dict[str, str] = {}

    def stage(self, name: str, total: int) -> None:
        """A new stage (screening, full measurement): its own count and ETA."""
        self.stage_name = name
        self.bar.reset(total=total)
        self.bar.set_description(name)

    def on_progress(self, kind: str, *args: Any) -> None:
        if kind == "screening":
            self.bar.set_description(f"{self.stage_name}: probing depths")
        elif kind == "loading":
            self.bar.set_description(f"loading {args[0]:.0%}")
        elif kind == "loaded":
            self.bar.set_description(f"loaded in {args[0]:.1f}s")
        elif kind == "waiting":  # the engine went away: (its name, since HH:MM)
            self.bar.set_description(f"waiting for {args[0]} since {args[1]}")
        elif kind == "engine back":
            self.bar.set_description(f"{args[0]} is back; measuring again")
        elif kind == "run":
            workload, index, run = args
            assert isinstance(run, Run)
            label = "warm-up" if index < 0 else f"run {index + 1}"
            self.bar.set_description(f"{workload} {label}: {run.decode_tok_s:.1f} tok/s")

    def on_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        recs = records.load(study)
        for w in self.config.workloads:
            pts = points(recs, w.name)
            if pts:
                p = max(pts, key=lambda p: p.tok_s.median)
                self.best[w.name] = f"{p.tok_s.median:.1f} tok/s (#{p.trial})"
        reason = records.read(trial).infeasible_reason()
        self.bar.set_description(f"{self.stage_name} trial {trial.number} " + (reason or "ok"))
        self.bar.set_postfix_str(" best " + ", ".join(f"{k} {v}" for k, v in self.best.items()))
        self.bar.update(1)

    def engine_away(self, message: str) -> None:
        """Said by the command's one line on stderr."""

    def close(self) -> None:
        self.bar.close()


class JsonProgress:
    """The same events as JSON lines on stdout, for a supervisor (``sweeper serve``): one line
    a stage and a trial, so the service redraws a page when there is something new."""

    def __init__(self, config: StudyConfig, out: Any = None) -> None:
        self.config, self.out, self.stage_name = config, out or sys.stdout, ""

    def emit(self, event: str, **fields: Any) -> None:
        self.out.write(json.dumps({"event": event, **fields}) + "\n")
        self.out.flush()

    def stage(self, name: str, total: int) -> None:
        self.stage_name = name
        self.emit("stage", stage=name, total=total)

    def on_progress(self, kind: str, *args: Any) -> None:
        if kind == "loading":  # the bar's percentages would be lines with nothing new
            return
        if kind in ("waiting", "engine back"):
            self.emit("progress", kind=kind, stage=self.stage_name, engine=args[0], since=args[1])
            return
        self.emit("progress", kind=kind, stage=self.stage_name)

    def on_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        reason = records.read(trial).infeasible_reason()
        self.emit("trial", number=trial.number, stage=self.stage_name, failure=reason)

    def engine_away(self, message: str) -> None:
        """The sweep stopped because its engine stayed away: resumable, not failed."""
        self.emit("engine_away", message=message)

    def close(self) -> None:
        self.emit("closed")
