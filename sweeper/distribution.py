"""This install of sweeper: its distribution name, how it was installed (so that a hint prints
a command that works there), and the example studies it ships."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import sys
from pathlib import Path

from sweeper import lock

#: "sweeper" on PyPI is another project (a duplicate-file finder); ours is published as this.
NAME = "loadsweeper"

#: Packages that compile C/C++ when pip installs them, and what that needs.
COMPILED = {
    "llama-cpp-python": "it compiles llama.cpp: a C/C++ compiler and CMake, minutes the first time"
}


def install_kind() -> str:
    """``checkout`` (run from a source tree, an editable install: `make install`), ``pipx``,
    ``uv`` (a uv tool) or ``pip`` (anything else: a venv, a user install)."""
    if _in_checkout():
        return "checkout"
    parts = [p.lower() for p in Path(sys.prefix).parts]
    if "pipx" in parts and "venvs" in parts:
        return "pipx"
    if "uv" in parts and "tools" in parts:
        return "uv"
    return "pip"


def _in_checkout() -> bool:
    """A wheel puts the package in site-packages, with no pyproject.toml beside it."""
    return (Path(__file__).parent.parent / "pyproject.toml").is_file()


def install_command(*requirements: str, ours: bool = False) -> str:
    """The command that adds ``requirements`` to the environment this sweeper runs in, quoted
    with double quotes (cmd.exe, PowerShell and POSIX shells all read them). ``ours``: all are
    sweeper's own requirements, which a checkout's `make install` installs."""
    quoted = " ".join(f'"{r}"' for r in requirements)
    kind = install_kind()
    if kind == "checkout" and ours:
        return "`make install` in the checkout"
    if kind == "pipx":
        return f"`pipx inject {NAME} {quoted}`"
    if kind == "uv":
        return f'`uv pip install --python "{sys.executable}" {quoted}`'
    return f'`"{sys.executable}" -m pip install {quoted}`'


def requirement(package: str) -> str | None:
    """``package`` as our metadata requires it (``lmstudio==1.5.0``); None if it is not ours."""
    try:
        requires = importlib.metadata.requires(NAME) or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    for spec in requires:
        name = re.split(r"[\s;<>=!~\[]", spec, maxsplit=1)[0]
        if name.lower().replace("_", "-") == package.lower().replace("_", "-"):
            return spec.split(";")[0].strip()
    return None


def install_hint(*packages: str) -> str:
    """What to run to get ``packages``, e.g. ``run `"C:\\...\\python.exe" -m pip install
    "llama-cpp-python>=0.3.36"` (it compiles llama.cpp: ...)``."""
    specs = [requirement(p) for p in packages]
    command = install_command(
        *(spec or p for spec, p in zip(specs, packages, strict=True)), ours=None not in specs
    )
    notes = [COMPILED[p] for p in packages if p in COMPILED]
    why = f" ({'; '.join(notes)})" if notes else ""
    return f"run {command}{why}"


def examples() -> list[Path]:
    """The example study files this install ships: a wheel's ``sweeper/examples``, which is a
    checkout's ``studies/`` (an editable install and a source tree use that folder itself)."""
    here = Path(__file__).parent
    for folder in (here / "examples", here.parent / "studies"):
        if folder.is_dir():
            return sorted(folder.glob("*.toml"))
    return []


def default_studies() -> Path:
    """The studies folder of an install that was given none: ``<SWEEPER_HOME>/studies``,
    seeded with the example studies when it is first made (the user's edits and deletions
    are theirs after that)."""
    folder = lock.home() / "studies"
    if not folder.exists():
        staging = folder.with_name(".studies-seeding")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for example in examples():
            shutil.copyfile(example, staging / example.name)
        staging.replace(folder)
    return folder
