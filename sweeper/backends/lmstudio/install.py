"""A preset installed as LM Studio's default load config of a model, and undone; and the
settings that file holds today (what LM Studio applies on every load of the model)."""

from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Any

from sweeper import system
from sweeper.backends import PresetSource
from sweeper.backends.lmstudio.config import from_wire
from sweeper.backends.lmstudio.presets import lmstudio_json
from sweeper.errors import ExportError, SweeperError
from sweeper.files import write_atomic


def install_path(model_key: str) -> Path:
    """Where LM Studio reads a model's default load config (internal, undocumented)."""
    defaults = system.lmstudio_home() / ".internal" / "user-concrete-model-default-config"
    key = Path(model_key)
    if ".." in key.parts or key.is_absolute() or key.drive or key.root:
        raise ExportError(f"{model_key!r} is not an LM Studio model key")
    return defaults / f"{model_key}.json"


def install(p: PresetSource) -> tuple[Path, Path | None]:
    """Put the preset's load settings into LM Studio's per-model default config: only the load
    keys sweeper measured are replaced, every other field of the file is kept (the user's
    reasoning effort, system prompt, ...); an existing file is backed up first."""
    target = install_path(p.model)
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


def undo(target: Path, backup: Path | None) -> None:
    """Put back what ``install`` replaced (no backup: there was no file)."""
    if backup is None:
        target.unlink(missing_ok=True)
        return
    shutil.copy2(backup, target)
    backup.unlink()


def _keys(doc: dict[str, Any]) -> set[str]:
    return {f["key"] for f in doc["load"]["fields"]}


def current_settings(model: str) -> tuple[dict[str, Any], str | None]:
    """The settings of the model's default config (canonical names), or why there are none."""
    try:
        target = install_path(model)
    except SweeperError as exc:
        return {}, str(exc)
    try:
        doc = json.loads(target.read_text(encoding="utf-8"))
        applied = from_wire({f["key"]: f["value"] for f in doc["load"]["fields"]}, None)
    except FileNotFoundError:
        return {}, (
            f"LM Studio has no saved load settings for {model} (no {target.name}): it loads "
            "it with its own defaults, which the first trial records"
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SweeperError) as exc:
        return {}, f"LM Studio's saved settings for {model} cannot be read here ({exc})"
    return applied, None
