"""GGUF model files: the metadata sweeper needs, read in one place without an engine (the LM
Studio path must work without llama.cpp installed).

Only the header's key/value pairs are read, up to the keys asked for: ``gguf.GGUFReader`` parses
every array of the file (a 262,144-token vocabulary took 10 s), this takes milliseconds. The
value types are the ``gguf`` package's.
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path
from typing import Any, BinaryIO

from gguf import GGUFValueType

from sweeper.errors import StudyFileError

_SCALARS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    return f.read(_read(f, "<Q")).decode("utf-8", errors="replace")


def _value(f: BinaryIO, kind: int) -> Any:
    """A value of ``kind``; arrays are skipped (None): sweeper needs none of them."""
    if kind == GGUFValueType.STRING:
        return _string(f)
    if kind == GGUFValueType.ARRAY:
        item, count = _read(f, "<I"), _read(f, "<Q")
        if item == GGUFValueType.STRING:
            for _ in range(count):
                f.seek(_read(f, "<Q"), 1)
        elif item in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[GGUFValueType(item)]) * count, 1)
        else:
            for _ in range(count):
                _value(f, item)
        return None
    return _read(f, _SCALARS[GGUFValueType(kind)])


@functools.cache
def metadata(path: str) -> dict[str, Any]:
    """The GGUF's scalar and string key/value metadata."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        _read(f, "<I")  # version
        _read(f, "<Q")  # tensor count
        out: dict[str, Any] = {}
        for _ in range(_read(f, "<Q")):
            key = _string(f)
            value = _value(f, _read(f, "<I"))
            if value is not None:
                out[key] = value
        return out


def block_count(path: str | Path) -> int | None:
    """The model's layer (block) count, or None when the file cannot be read."""
    try:
        meta = metadata(str(Path(path).expanduser()))
        return int(meta[f"{meta['general.architecture']}.block_count"])
    except Exception:  # an unreadable file, or no such key, just means "unknown"
        return None


def architecture(path: str | Path) -> str | None:
    try:
        return str(metadata(str(Path(path).expanduser()))["general.architecture"])
    except Exception:
        return None


def check_reasoning_effort(path: str, effort: str | None) -> None:
    """Refuse a study's reasoning effort for a model whose chat template ignores it (only a
    template that reads ``reasoning_effort`` can pass it to the model)."""
    template = str(metadata(path).get("tokenizer.chat_template") or "")
    if effort and "reasoning_effort" not in template:
        raise StudyFileError(
            f"reasoning_effort: the chat template of {Path(path).name} does not read it, so it "
            "would be ignored: remove reasoning_effort from the study"
        )
