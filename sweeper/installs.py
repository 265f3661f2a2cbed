"""Install a confirmed preset where its engine reads a model's load settings, and undo it, for
the CLI and the service alike: every install is recorded in one history (what was written
where, the backup of what was there, and what the preset was measured with: the engine's
version, the layers it put on the GPU), so either face can put it back, and the service flags
it when an engine update may have made it wrong."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sweeper import config as config_file
from sweeper import export, fingerprint, lock, records, studyrecord
from sweeper.backends import backend_class
from sweeper.errors import SweeperError
from sweeper.files import write_atomic
from sweeper.measurement import Confirmation
from sweeper.recommend import CONFIRMED
from sweeper.storage import open_study


class InstallRefused(SweeperError):
    """Only a confirmed recommendation of a model LM Studio knows by name is installed."""


#: How long the studies page trusts its last look at LM Studio's versions.
ENGINE_TTL_S = 300.0
#: What every install says: the file holds one preset per model, and undo puts the file back.
NOTES = (
    "LM Studio keeps one default config per model: this preset replaced the load settings "
    "there (for every workload); undo restores the whole file as it was before this install"
)


def history() -> Path:
    """The one install history of this user (the service's folder, where it always was)."""
    return lock.home() / "service" / "installs.json"


class Installs:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or history()
        self._lock = threading.Lock()
        self._engines: dict[tuple[str, str | None], tuple[float, str | None]] = {}

    def _read(self) -> list[dict[str, Any]]:
        """Every install so far; a history that cannot be read is refused (writing over it
        would lose the backups it points to), never taken for an empty one."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise InstallRefused(f"cannot read the install history {self.path}: {exc}") from None
        try:
            rows = json.loads(text)
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ValueError("not a list of installs")
        except ValueError as exc:
            raise InstallRefused(
                f"the install history {self.path} is damaged ({exc}); move it away (the backups "
                "it lists stay next to LM Studio's files)"
            ) from None
        return rows

    def _write(self, rows: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(rows, indent=1), force=True)

    def for_study(self, study_file: str) -> list[dict[str, Any]]:
        return [r for r in self._read() if r["study"] == study_file]

    def install(self, path: Path, workload: str, storage: str | None = None) -> dict[str, Any]:
        """Install the confirmed recommendation of ``workload``; the history's new row."""
        config = config_file.load(str(path))
        config.check_workload(workload)
        if not backend_class(config.backend).names_lmstudio_models:
            raise InstallRefused(
                f"{config.backend} studies name a model file, not an LM Studio model: "
                "download the preset instead"
            )
        study = open_study(config, storage)
        preset = export.preset_for(study, config, workload)
        if preset.recommendation.status != CONFIRMED:
            raise InstallRefused(
                f"{workload}: {preset.recommendation.claim()}; only a recommendation confirmed "
                f"side by side is installed (run `sweeper confirm {path.name}`)"
            )
        trial = preset.recommendation.point.trial
        measured = next(r for r in records.load(study) if r.number == trial)
        confirmed = [
            c
            for c in studyrecord.confirmations(study)
            if c.workload == workload and c.chosen == trial and c.engine
        ]
        with self._lock:
            rows = self._read()  # before LM Studio's file is touched: an install is recorded
            try:
                target, backup = backend_class(config.backend).install(preset)
            except OSError as exc:  # a full disk, a folder where a file should be, ...
                raise InstallRefused(f"cannot install into LM Studio: {exc}") from None
            row = {
                "n": str(len(rows) + 1),
                "study": path.name,
                "workload": workload,
                "target": str(target),
                "backup": str(backup) if backup else None,
                "when": time.strftime("%Y-%m-%d %H:%M"),
                "at": time.time(),
                "undone": False,
                "settings": preset.settings.to_dict(),
                "backend": config.backend,
                "trial": trial,
                # what the gain was last confirmed on, else what the trial was measured on
                "engine": confirmed[-1].engine
                if confirmed
                else (measured.machine or {}).get("backend_version"),
                "gpu_layers": measured.gpu_layers,
            }
            self._write([*rows, row])
        return row

    def active(self) -> dict[str, list[dict[str, Any]]]:
        """The installs still in place by study file: per file written, the latest not
        undone."""
        latest: dict[str, dict[str, Any]] = {}
        for r in self._read():
            latest[r["target"]] = r
        out: dict[str, list[dict[str, Any]]] = {}
        for r in latest.values():
            if not r["undone"]:
                out.setdefault(r["study"], []).append(r)
        return out

    def engine_now(self, backend: str, host: str | None) -> str | None:
        """The engine's version as it is now (LM Studio asked at most every few minutes)."""
        key = (backend, host)
        seen = self._engines.get(key)
        if seen is None or time.monotonic() - seen[0] > ENGINE_TTL_S:
            seen = (time.monotonic(), backend_class(backend).engine_version({"host": host}))
            self._engines[key] = seen
        return seen[1]

    def undo(self, n: str) -> dict[str, Any]:
        with self._lock:
            rows = self._read()
            row = next((r for r in rows if r["n"] == n), None)
            if row is None:
                raise InstallRefused(f"no install number {n}")
            if row["undone"]:
                raise InstallRefused(f"install {n} was already undone")
            later = [r for r in rows if r["target"] == row["target"] and int(r["n"]) > int(n)]
            if any(not r["undone"] for r in later):
                raise InstallRefused(f"undo the later install of {row['target']} first")
            backup = Path(row["backup"]) if row["backup"] else None
            try:
                backend_class(row.get("backend", "lmstudio")).undo_install(
                    Path(row["target"]), backup
                )
            except OSError as exc:
                raise InstallRefused(f"cannot undo install {n}: {exc}") from None
            row["undone"] = True
            self._write(rows)
        return row


def changes(
    row: dict[str, Any],
    engine_now: str | None,
    recs: Sequence[records.TrialRecord],
    confirmations: Sequence[Confirmation] = (),
) -> list[str]:
    """Why an installed preset may no longer hold: LM Studio (its app or a runtime) is not the
    one the preset was measured with (or re-confirmed on since), or a load of the installed
    settings since the install put another number of layers on the GPU (an update can do that
    without a word)."""
    out = []
    then = row.get("engine")
    backend = row.get("backend", "lmstudio")
    settings = {r.number: r.settings for r in recs}
    again = [
        c
        for c in confirmations
        if c.workload == row.get("workload")
        and c.engine
        and c.chosen is not None
        and settings.get(c.chosen) == row.get("settings")
        and c.ended() > row.get("at", 0)
    ]
    if again:  # re-confirmed since the install: the engine it was re-confirmed on counts
        then = again[-1].engine
    if (
        fingerprint.engine_known(backend, engine_now)
        and fingerprint.engine_known(backend, then)
        and engine_now != then
    ):
        out.append(f"LM Studio changed since the preset was measured: {then} -> {engine_now}")
    layers, installed, at = row.get("gpu_layers"), row.get("settings"), row.get("at", 0)
    # every load of the installed settings since the install that said its GPU layers: a
    # later sweep's trial, or a re-confirmation's candidate
    later = [
        (r.datetime_complete.timestamp(), r.gpu_layers, f"trial {r.number}")
        for r in recs
        if r.settings == installed
        and r.gpu_layers is not None
        and r.datetime_complete is not None
        and r.datetime_complete.timestamp() > at
    ]
    for c in confirmations:
        cand = next((x for x in c.candidates if x.settings == installed), None)
        when = c.ended()
        if cand is not None and cand.gpu_layers is not None and when > at:
            later.append((when, cand.gpu_layers, f"the re-confirmation of {c.when}"))
    if layers is not None and later:
        _, newest, what = max(later, key=lambda x: x[0])
        if newest != layers:
            out.append(
                f"{what} put {newest:g} layers on the GPU with the installed settings; the "
                f"preset was measured with {layers:g}"
            )
    return out
