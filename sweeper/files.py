"""Files written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sweeper.errors import SweeperError


class FileExistsRefused(SweeperError):
    """A file is in the way and may not be replaced."""


def write_atomic(path: Path, text: str, force: bool = False) -> None:
    """Write ``text`` to ``path`` all at once; refuse to replace a file unless ``force``."""
    if path.exists() and not force:
        raise FileExistsRefused(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; exports are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
