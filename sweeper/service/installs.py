"""Install a confirmed preset into LM Studio, and undo it: every install is recorded (what was
written where, and the backup of what was there) so the page can put it back."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from sweeper import config as config_file
from sweeper import export
from sweeper.backends import backend_class
from sweeper.errors import SweeperError
from sweeper.files import write_atomic
from sweeper.recommend import CONFIRMED
from sweeper.storage import open_study


class InstallRefused(SweeperError):
    """Only a confirmed recommendation of a model LM Studio knows by name is installed."""


class Installs:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> list[dict[str, Any]]:
        try:
            rows: list[dict[str, Any]] = json.loads(self.path.read_text(encoding="utf-8"))
            return rows
        except (OSError, ValueError):
            return []

    def for_study(self, study_file: str) -> list[dict[str, Any]]:
        return [r for r in self._read() if r["study"] == study_file]

    def install(self, path: Path, workload: str) -> dict[str, Any]:
        config = config_file.load(str(path))
        config.check_workload(workload)
        if not backend_class(config.backend).names_lmstudio_models:
            raise InstallRefused(
                f"{config.backend} studies name a model file, not an LM Studio model: "
                "download the preset instead"
            )
        preset = export.preset_for(open_study(config), config, workload)
        if preset.recommendation.status != CONFIRMED:
            raise InstallRefused(
                f"{workload}: {preset.recommendation.claim()}; only a recommendation confirmed "
                f"side by side is installed (run `sweeper confirm {path.name}`)"
            )
        with self._lock:
            try:
                target, backup = export.install_lmstudio(preset)
            except OSError as exc:  # a full disk, a folder where a file should be, ...
                raise InstallRefused(f"cannot install into LM Studio: {exc}") from None
            rows = self._read()
            row = {
                "n": str(len(rows) + 1),
                "study": path.name,
                "workload": workload,
                "target": str(target),
                "backup": str(backup) if backup else None,
                "when": time.strftime("%Y-%m-%d %H:%M"),
                "undone": False,
            }
            write_atomic(self.path, json.dumps([*rows, row], indent=1), force=True)
        return row

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
                export.undo_install(Path(row["target"]), backup)
            except OSError as exc:
                raise InstallRefused(f"cannot undo install {n}: {exc}") from None
            row["undone"] = True
            write_atomic(self.path, json.dumps(rows, indent=1), force=True)
        return row
