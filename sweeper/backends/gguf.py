"""GGUF model files: the metadata sweeper needs, read in one place (the ``gguf`` package, no
engine needed: the LM Studio path must work without llama.cpp installed)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any


@functools.cache
def metadata(path: str) -> dict[str, Any]:
    """The GGUF's key/value metadata (scalars and strings; arrays are left out)."""
    import gguf

    reader = gguf.GGUFReader(path)
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or len(field.types) != 1:
            continue  # the container's own header fields, and arrays
        value = field.contents()
        out[key] = value
    return out


def block_count(path: str | Path) -> int | None:
    """The model's layer (block) count, or None when the file cannot be read."""
    try:
        meta = metadata(str(Path(path).expanduser()))
        return int(meta[f"{meta['general.architecture']}.block_count"])
    except Exception:  # an unreadable or split file, or no such key, just means "unknown"
        return None


def architecture(path: str | Path) -> str | None:
    try:
        return str(metadata(str(Path(path).expanduser()))["general.architecture"])
    except Exception:
        return None
