"""The rig model (tests/rig, simulated) against every public point it is calibrated to.

Each point of shared/reference/rig-calibration.md that states enough settings is predicted by
tests/rig/physics.py with its rig's data file; the results file lists each point, the figure the
source reported, the prediction and the error, and the shape targets (orderings) met or missed.
Four constants are fitted (data/constants.toml says which) to the decode points; the TTFT
points are reported, not fitted (one request overhead that no source pins would fit them, and
the article's two Before TTFTs differ threefold on one configuration). ``--fit`` searches them again
(log-space coordinate descent on the squared log errors of the fitted points) and prints them,
it does not write the constants file. Seconds on any machine: no timing is taken.

Writes benchmarks/results/rig_calibration.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from rig.physics import FITTED, GIB, Constants, Load, Model, Rig, RigModel

OUT = Path(__file__).parent / "results" / "rig_calibration.json"
#: The harmony chat template's system message (~70 tokens) and the article's Japanese prompt
#: (~40): an assumption, the article does not say how many tokens its prompts were.
PROMPT_TOKENS = 110

BEFORE = Load(gpu_layers=17, context=4096, batch=512, threads=4, flash_attention=False)
AFTER = Load(gpu_layers=24, context=12288, batch=256, threads=6, flash_attention=True)


@dataclass(frozen=True)
class Point:
    name: str
    rig: str
    load: Load
    metric: (
        str  # "mean_tok_s" over an output of ``tokens``, "tok_s" at ``depth``, "ttft_s", "vram_gb"
    )
    reported: float
    fitted: bool
    source: str
    tokens: int = 0
    depth: int = 512


POINTS = [
    Point(
        "1 Before short", "article-pc-windows", BEFORE, "mean_tok_s", 10.21, True, "article", 3102
    ),
    Point(
        "1 Before long", "article-pc-windows", BEFORE, "mean_tok_s", 10.42, True, "article", 2784
    ),
    Point("2 After short", "article-pc-windows", AFTER, "mean_tok_s", 9.94, True, "article", 2331),
    Point("2 After long", "article-pc-windows", AFTER, "mean_tok_s", 8.49, True, "article", 2454),
    Point("1 Before short TTFT", "article-pc-windows", BEFORE, "ttft_s", 2.24, False, "article"),
    Point("1 Before long TTFT", "article-pc-windows", BEFORE, "ttft_s", 0.81, False, "article"),
    Point("2 After short TTFT", "article-pc-windows", AFTER, "ttft_s", 2.64, False, "article"),
    Point("2 After long TTFT", "article-pc-windows", AFTER, "ttft_s", 1.88, False, "article"),
    Point(
        "3 --n-cpu-moe 2, 16K, FA assumed on",
        "rtx3060-pcie4-linux",
        Load(24, 16384, 2048, 6, True, cpu_moe_layers=2),
        "tok_s",
        64.0,
        True,
        "smeltcore.com recipe (2026-06-13)",
    ),
    Point(
        "4 Ollama 53% GPU layers, 8K, FA assumed off",
        "rtx4070-7800x3d",
        Load(13, 8192, 512, 8, False),
        "tok_s",
        10.0,
        False,
        "ollama/ollama#11688 (Ollama's own engine: reported, not fitted)",
    ),
    Point(
        "6 --n-cpu-moe 12, 4K, FA assumed off",
        "rtx2080-10900x",
        Load(24, 4096, 2048, 10, False, cpu_moe_layers=12),
        "tok_s",
        36.4,
        True,
        "AlexsJones/llmfit#775 (mean of 3)",
        depth=128,
    ),
    Point(
        "7 -ngl 99 -fa, full context",
        "rx7900xt-5900x",
        Load(24, 131072, 2048, 12, True),
        "tok_s",
        94.0,
        True,
        "ggml-org/llama.cpp discussion #15396",
    ),
    Point(
        "8 -cmoe (every layer's experts on the CPU)",
        "rx7900xt-5900x",
        Load(24, 131072, 2048, 12, True, cpu_moe_layers=24),
        "tok_s",
        20.0,
        True,
        "ggml-org/llama.cpp discussion #15396",
    ),
    Point(
        "9 as 7 with q8_0 K/V ('halved'; type assumed)",
        "rx7900xt-5900x",
        Load(24, 131072, 2048, 12, True, k_cache="q8_0", v_cache="q8_0"),
        "tok_s",
        47.0,
        True,
        "ggml-org/llama.cpp discussion #15396",
    ),
    Point(
        "deployed VRAM at 8K (ub 512, FA assumed on)",
        "rx7900xt-5900x",
        Load(24, 8192, 2048, 12, True),
        "vram_gb",
        14.9,
        False,
        "llama.cpp gpt-oss guide, discussion #15396",
    ),
    Point(
        "deployed VRAM at 32K",
        "rx7900xt-5900x",
        Load(24, 32768, 2048, 12, True),
        "vram_gb",
        15.5,
        False,
        "same",
    ),
    Point(
        "deployed VRAM at 128K",
        "rx7900xt-5900x",
        Load(24, 131072, 2048, 12, True),
        "vram_gb",
        17.9,
        False,
        "same",
    ),
]


def mean_tok_s(rm: RigModel, load: Load, start: int, tokens: int) -> float:
    """Output tokens over the seconds they took, from the prompt's depth to the end."""
    place = rm.place(load)
    steps = 32
    seconds = sum(
        rm.token_seconds(load, place, start + int((i + 0.5) * tokens / steps)) * tokens / steps
        for i in range(steps)
    )
    return tokens / seconds


def predict(p: Point, constants: Constants) -> float:
    rm = RigModel(Rig.named(p.rig), Model.named(), constants)
    if p.metric == "mean_tok_s":
        return mean_tok_s(rm, p.load, PROMPT_TOKENS, p.tokens)
    if p.metric == "tok_s":
        return rm.decode_tok_s(p.load, p.depth)
    if p.metric == "ttft_s":
        return rm.ttft_s(p.load, PROMPT_TOKENS)
    place = rm.place(p.load)
    return place.required_bytes / 1e9


def loss(constants: Constants) -> float:
    return sum(
        math.log(predict(p, constants) / p.reported) ** 2
        for p in POINTS
        if p.fitted and p.metric != "vram_gb"
    )


def fit(constants: Constants) -> Constants:
    best, best_loss = constants, loss(constants)
    for step in (1.0, 0.5, 0.25, 0.1, 0.05):
        improved = True
        while improved:
            improved = False
            for name in FITTED:
                for direction in (1, -1):
                    value = getattr(best, name) * math.exp(direction * step)
                    trial = best.with_fitted(**{name: value})
                    if (trial_loss := loss(trial)) < best_loss - 1e-9:
                        best, best_loss, improved = trial, trial_loss, True
    return best


def shape_targets(c: Constants) -> list[dict[str, Any]]:
    win = RigModel(Rig.named("article-pc-windows"), Model.named(), c)
    linux = RigModel(Rig.named("article-pc-linux"), Model.named(), c)
    p3 = RigModel(Rig.named("rtx3060-pcie4-linux"), Model.named(), c)
    short = {p.name: predict(p, c) for p in POINTS}
    moe2 = p3.decode_tok_s(Load(24, 16384, 2048, 6, True, cpu_moe_layers=2), 512)
    layer70 = p3.decode_tok_s(Load(17, 16384, 2048, 6, True), 512)
    all_cpu = p3.decode_tok_s(Load(24, 16384, 2048, 6, True, cpu_moe_layers=24), 512)
    deep = p3.decode_tok_s(Load(24, 16384, 2048, 6, True, cpu_moe_layers=2), 12000)
    after = win.place(AFTER)
    targets = [
        (
            "After slower than Before, both workloads",
            short["2 After short"] < short["1 Before short"]
            and short["2 After long"] < short["1 Before long"],
            f"short {short['2 After short']:.2f} < {short['1 Before short']:.2f}, "
            f"long {short['2 After long']:.2f} < {short['1 Before long']:.2f} tok/s",
        ),
        (
            "After's TTFT longer than Before's",
            short["2 After short TTFT"] > short["1 Before short TTFT"],
            f"{short['2 After short TTFT']:.2f} s > {short['1 Before short TTFT']:.2f} s",
        ),
        (
            "After spills on Windows, fails out of memory on Linux",
            after.spills and linux.place(AFTER).oom,
            f"{after.spilled_bytes / GIB:.2f} GiB spilled on Windows; "
            f"Linux out of memory: {linux.place(AFTER).oom}",
        ),
        (
            "2 expert layers on the CPU several (>=3) times faster than 70% layer offload",
            moe2 >= 3 * layer70,
            f"{moe2:.1f} vs {layer70:.1f} tok/s (point 3's rig, 16K, depth 512)",
        ),
        (
            "all experts on the CPU in between",
            layer70 < all_cpu < moe2,
            f"{layer70:.1f} < {all_cpu:.1f} < {moe2:.1f} tok/s",
        ),
        (
            "decode falls with depth",
            deep < moe2,
            f"{moe2:.1f} at depth 512 -> {deep:.1f} tok/s at 12000 (point 3's load)",
        ),
    ]
    within = [
        p.name
        for p in POINTS
        if p.name.startswith(("1 ", "2 ", "3 ")) and "TTFT" not in p.name
        if abs(predict(p, c) / p.reported - 1) > 0.30
    ]
    targets.append(
        (
            "article's tok/s points and the 64 tok/s point within 30%",
            not within,
            "all within" if not within else f"missed: {within}",
        )
    )
    return [{"target": t, "met": bool(ok), "detail": d} for t, ok, d in targets]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fit", action="store_true", help="search the fitted constants again")
    args = parser.parse_args()
    constants = Constants.load()
    if args.fit:
        fitted = fit(constants)
        for name in FITTED:
            print(f"{name} = {getattr(fitted, name):.4g}")
        return
    rows = []
    for p in POINTS:
        pred = predict(p, constants)
        rows.append(
            {
                "point": p.name,
                "rig": p.rig,
                "metric": p.metric,
                "load": asdict(p.load),
                "reported": p.reported,
                "predicted": round(pred, 3),
                "error_pct": round(100 * (pred / p.reported - 1), 1),
                "fitted_to": p.fitted,
                "source": p.source,
            }
        )
    result = {
        "benchmark": "rig model (simulated, tests/rig) against public gpt-oss-20b points",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": Model.named().name,
        "prompt_tokens_assumed": PROMPT_TOKENS,
        "fitted_constants": {n: getattr(constants, n) for n in FITTED},
        "loss_sum_sq_log_error": round(loss(constants), 4),
        "points": rows,
        "shape_targets": shape_targets(constants),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(
            f"{r['point']:55s} {r['reported']:8.2f} {r['predicted']:8.2f} {r['error_pct']:+7.1f}%"
        )
    for t in result["shape_targets"]:
        print(f"{'met ' if t['met'] else 'MISS'} {t['target']}: {t['detail']}")


if __name__ == "__main__":
    main()
