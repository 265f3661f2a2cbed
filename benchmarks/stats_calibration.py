"""How often do identical configurations get a verdict (a false "faster" or "slower")? The
paired Student t interval of ``sweeper.stats`` on A/A comparisons of 4 rounds (seeded Gaussian
noise, CV 1.25%, as tests/test_stats.py draws them), at the 95% and 99.9% levels, SIMS each.
The suite draws 500 (its bounds recomputed for that size); this draws calibration-size samples.
Writes benchmarks/results/stats_calibration.json.

    .venv/bin/python benchmarks/stats_calibration.py
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from sweeper.stats import paired_difference, verdict

SIMS = int(os.environ.get("STATS_SIMS", "20000"))
OUT = Path(__file__).parent / "results" / "stats_calibration.json"


def main() -> None:
    rng = np.random.default_rng(4)
    levels = (0.95, 0.999)
    false = dict.fromkeys(levels, 0)
    for _ in range(SIMS):
        a = rng.normal(40.0, 0.5, size=4)
        b = rng.normal(40.0, 0.5, size=4)
        for level in levels:
            false[level] += verdict(paired_difference(a, b, level), True) != (
                "no detectable difference"
            )
    rows = []
    for level in levels:
        rate = false[level] / SIMS
        sd = math.sqrt(rate * (1 - rate) / SIMS)
        rows.append(
            {
                "level": level,
                "nominal_false_verdicts": round(1 - level, 4),
                "false_verdicts": round(rate, 5),
                "sd": round(sd, 5),
                "comparisons": SIMS,
            }
        )
        print(f"level {level}: {rate:.4f} false verdicts (sd {sd:.4f}, nominal {1 - level:.3f})")
    result = {
        "what": "false verdicts of the paired t interval on A/A comparisons of 4 rounds",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": rows,
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
