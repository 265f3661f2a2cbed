"""The machine a trial ran on: CPU, cores, RAM, GPU, backend version, model identity."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

from sweeper import __version__, system
from sweeper.backends import backend_class
from sweeper.errors import SweeperError


def machine(backend: str, model: str, engine: str | None = None) -> dict[str, Any]:
    """``engine``: the engine's own version when the backend knows it (llama-server's build)."""
    return {
        "host": platform.node(),
        "cpu": system.cpu_name(),
        "cores": os.cpu_count(),
        "ram_gb": system.ram_gb(),
        "gpus": system.gpus(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "backend": backend,
        "backend_version": engine or _version(backend),
        "model": _model_identity(model),
    }


def _version(backend: str) -> str | None:
    """The engine package's version, or sweeper's own for a backend without one."""
    try:
        package = backend_class(backend).package
    except SweeperError:  # a backend this install does not have
        package = None
    if package is None:
        return __version__
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _model_identity(model: str) -> dict[str, Any]:
    """A local model file by name, size and a hash of its first and last MiB (a full hash
    of a 12 GB file would take a minute); anything else (an LM Studio key) as given."""
    path = Path(model)
    if not path.is_file():
        return {"key": model}
    size = path.stat().st_size
    h = hashlib.sha256()
    with path.open("rb") as f:
        h.update(f.read(2**20))
        f.seek(max(0, size - 2**20))
        h.update(f.read(2**20))
    return {"file": path.name, "size": size, "sha256_head_tail": h.hexdigest()}


#: What must match for two machines' numbers to be comparable (the host name need not).
COMPARED = ("cpu", "cores", "ram_gb", "gpus", "backend", "backend_version", "model")


def comparable(m: dict[str, Any]) -> dict[str, Any]:
    out = {k: m.get(k) for k in COMPARED}
    if isinstance(out["ram_gb"], int | float):
        out["ram_gb"] = round(out["ram_gb"])  # the kernel's MemTotal varies by a few MB
    return out


def short_id(m: dict[str, Any]) -> str:
    text = json.dumps(comparable(m), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def engine_known(backend: str | None, version: str | None) -> bool:
    """Whether ``version`` names the engine itself, as the backend says (an LM Studio that did
    not answer left the SDK package's version there): only such versions are compared."""
    if not version:
        return False
    try:
        return backend is None or backend_class(backend).names_engine(version)
    except SweeperError:
        return True


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    ca, cb = comparable(a), comparable(b)
    out = []
    for k in COMPARED:
        if ca[k] == cb[k]:
            continue
        if k == "backend_version" and not (
            engine_known(ca["backend"], ca[k]) and engine_known(cb["backend"], cb[k])
        ):
            continue
        out.append(f"{k}: {ca[k]!r} vs {cb[k]!r}")
    return out
