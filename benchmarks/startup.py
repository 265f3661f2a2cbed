"""How long a trial's worker takes to start: what a fresh interpreter imports before it can
measure. A worker is a spawned process; it runs the parent's main script again (the installed
`sweeper` script, which imports the module its entry point names in the tree's pyproject.toml:
``sweeper.cli`` before issue 30, ``sweeper.__main__`` after) and imports the worker's own
module (``sweeper.runner``), so that is what is timed.

Per source tree (this checkout, and optionally an older one given with ``--before DIR``):
RUNS fresh interpreters run ``python -X importtime -c "import ENTRY, sweeper.runner"``;
the import time is the sum of ``-X importtime``'s self times (less noisy than wall time on a
busy machine), with the module count and which heavy libraries were imported. Wall time of
the whole interpreter is recorded too. Writes benchmarks/results/startup.json.

    .venv/bin/python benchmarks/startup.py --before /tmp/before --note "busy machine"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).parent.parent
OUT = Path(__file__).parent / "results" / "startup.json"
HEAVY = ("scipy", "pandas", "plotly", "optuna", "sqlalchemy", "numpy", "starlette", "llama_cpp")


def worker_imports(tree: Path) -> str:
    """What a worker spawned from the tree's `sweeper` script imports before it measures."""
    scripts = tomllib.loads((tree / "pyproject.toml").read_text())["project"]["scripts"]
    entry = scripts["sweeper"].split(":")[0]
    return f"import {entry}, sweeper.runner"


def probe(tree: Path) -> str:
    return (
        "import sys; " + worker_imports(tree) + "; import json; "
        f"print(json.dumps([len(sys.modules), [m for m in {HEAVY!r} if m in sys.modules]]))"
    )


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def one_run(tree: Path) -> tuple[float, float]:
    """(import time from -X importtime, wall time of the interpreter), in ms."""
    imports = worker_imports(tree)  # read before the clock starts: pyproject.toml is not timed
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", imports],
        env=os.environ | {"PYTHONPATH": str(tree)},
        cwd=tree,  # `python -c` puts the working directory first on sys.path
        capture_output=True,
        text=True,
        check=True,
    )
    wall_ms = (time.perf_counter() - start) * 1000
    selfs = [
        int(line.split("|")[0].split(":")[1])
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "self [us]" not in line
    ]
    return sum(selfs) / 1000, wall_ms


def describe(tree: Path) -> dict[str, object]:
    env = os.environ | {"PYTHONPATH": str(tree)}

    def python(code: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True
        ).stdout.strip()

    where = python("import sweeper; print(sweeper.__file__)")
    assert where.startswith(str(tree)), f"{tree} is not what was imported: {where}"
    modules, heavy = json.loads(python(probe(tree)))
    commit = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "tree": str(tree),
        "commit": commit,
        "imports": worker_imports(tree),
        "modules": modules,
        "heavy_imported": heavy,
    }


def machine(note: str) -> dict[str, object]:
    """The machine a start-up figure was measured on (``note``: its state, e.g. busy)."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "note": note,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--before", type=Path, help="an older source tree to compare with")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--note", default="", help="the machine's state, e.g. 'busy machine'")
    args = parser.parse_args()
    trees = {"after": ROOT}
    if args.before:
        trees = {"before": args.before.resolve(), **trees}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    for _ in range(args.runs):  # interleaved: a neighbour's load falls on every tree alike
        for name, tree in trees.items():
            runs[name].append(one_run(tree))
    result: dict[str, object] = {
        "what": "a fresh interpreter doing a trial worker's imports (each tree's: see imports)",
        "command": 'python -X importtime -c "IMPORTS" (import_ms: sum of self times)',
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(args.note),
    }
    for name, tree in trees.items():
        result[name] = describe(tree) | {
            "import_ms": spread([r[0] for r in runs[name]]),
            "wall_ms": spread([r[1] for r in runs[name]]),
        }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
