"""A/B comparison done properly: configurations interleaved round by round, each round a
fresh load, and a verdict only where the interval of the difference says so.

The article compared one run of "Before" with one run of "After". Here every round loads each
configuration in turn and runs every workload (after warm-up); the order rotates from round to
round (A B, B A, A B, ...), so no configuration always runs first, on a colder or a warmer
machine. The per-round medians of B are paired with A's from the same round, which cancels
slow drift, and the relative difference gets an interval (95% by default). "faster"/"slower"
is said only when the interval excludes zero and the difference is at least ``min_effect``.
"""

from __future__ import annotations

import statistics
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeper.errors import StudyFileError
from sweeper.measurement import TrialOutcome, gpu_layers
from sweeper.records import TrialRecord
from sweeper.settings import LoadSettings, invalid_combination
from sweeper.stats import LEVEL, Interval, bootstrap_ci, paired_difference, verdict

#: metric -> (label, higher is better)
METRICS = {
    "tok_s": ("Tokens/sec", True),
    "output_tokens": ("Total Tokens", True),
    "ttft_s": ("Time to First Token (sec)", False),
}

Runner = Callable[[LoadSettings], TrialOutcome]
OnRound = Callable[[int, str], None]
#: Called after each round with the results so far and the rounds done: True ends the rounds.
Stop = Callable[[list["ConfigResult"], int], bool]


@dataclass(frozen=True)
class Config:
    label: str
    settings: LoadSettings


def config_file(path: Path, supported: frozenset[str], backend: str) -> Config:
    """A configuration from a TOML file of load settings, labelled with the file's name."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StudyFileError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise StudyFileError(f"{path}: not valid TOML: {exc}") from None
    settings = LoadSettings.from_dict(data, str(path))
    why = invalid_combination(settings)
    if why:
        raise StudyFileError(f"{path}: {why}")
    unsupported = set(settings.to_dict()) - supported
    if unsupported:
        raise StudyFileError(
            f"{path}: the {backend} backend cannot apply {', '.join(sorted(unsupported))}"
        )
    return Config(path.stem, settings)


def distinct(configs: Sequence[Config]) -> list[Config]:
    """The same file twice (an A/A check) gets two names."""
    labels = [c.label for c in configs]
    return [
        Config(f"{c.label} ({labels[:i].count(c.label) + 1})", c.settings)
        if labels.count(c.label) > 1
        else c
        for i, c in enumerate(configs)
    ]


def trial_config(recs: Sequence[TrialRecord], number: int, study: str) -> Config:
    """The configuration a trial of the study measured, labelled "trial N"."""
    if not 0 <= number < len(recs) or not recs[number].settings:
        raise StudyFileError(f"no measured trial {number} in study {study!r}")
    return Config(f"trial {number}", LoadSettings(**recs[number].settings))


@dataclass
class ConfigResult:
    label: str
    settings: dict[str, Any]
    #: workload -> metric -> every measured run's value, round by round
    runs: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: workload -> metric -> one median per round
    rounds: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: workload -> every stop reason seen; workload -> did each round's runs all hit the cap
    stop_reasons: dict[str, set[str]] = field(default_factory=dict)
    hit_cap: dict[str, list[bool]] = field(default_factory=dict)
    #: the layers the engine said it put on the GPU, load by load (where it says so)
    gpu_layers: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Row:
    workload: str
    label: str
    metric: str
    median: Interval
    diff: Interval | None  # relative to the first configuration
    verdict: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "config": self.label,
            "metric": self.metric,
            "median": self.median.to_list(),
            "diff_vs_first": self.diff.to_list() if self.diff else None,
            "verdict": self.verdict,
        }


def run_rounds(
    configs: Sequence[Config],
    workloads: Sequence[str],
    rounds: int,
    runner: Runner,
    on_round: OnRound | None = None,
    stop: Stop | None = None,
) -> list[ConfigResult]:
    """Up to ``rounds`` rounds, each loading every configuration once in a rotating order;
    ``stop`` may end them early once the answer is clear."""
    results = [ConfigResult(c.label, c.settings.to_dict()) for c in configs]
    for r in range(rounds):
        for i in round_order(len(configs), r):
            config, result = configs[i], results[i]
            if on_round:
                on_round(r, config.label)
            outcome = runner(config.settings)
            layers = gpu_layers(r for wr in outcome.workloads.values() for r in wr.runs)
            if layers is not None:
                result.gpu_layers.append(layers)
            for w in workloads:
                wr = outcome.workloads[w]
                values = {
                    "tok_s": [x.decode_tok_s for x in wr.runs],
                    "ttft_s": [x.ttft_s for x in wr.runs],
                    "output_tokens": [float(x.output_tokens) for x in wr.runs],
                }
                for metric, vals in values.items():
                    result.runs.setdefault(w, {}).setdefault(metric, []).extend(vals)
                    result.rounds.setdefault(w, {}).setdefault(metric, []).append(
                        statistics.median(vals)
                    )
                result.stop_reasons.setdefault(w, set()).update(x.stop_reason for x in wr.runs)
                result.hit_cap.setdefault(w, []).append(wr.hit_cap)
        if stop is not None and stop(results, r + 1):
            break
    return results


def to_json(
    measured: Sequence[ConfigResult], rows: Sequence[Row], min_effect: float, level: float
) -> dict[str, Any]:
    return {
        "rounds": len(next(iter(measured[0].rounds.values()))["tok_s"]),
        "min_effect": min_effect,
        "level": level,
        "configs": [{"label": m.label, "settings": m.settings} for m in measured],
        "rows": [r.to_dict() for r in rows],
    }


def round_order(n: int, r: int) -> list[int]:
    """Round r runs the configurations rotated by r: each takes every position equally often
    over n rounds (a cyclic Latin square), so a position effect (the first load of a round on a
    cooler CPU, a GPU still clocked up from the previous one) does not favour one of them."""
    start = r % n
    return [*range(start, n), *range(start)]


def analyse(
    results: Sequence[ConfigResult], min_effect: float = 0.01, level: float = LEVEL
) -> list[Row]:
    rows = []
    first = results[0]
    for w in first.runs:
        for result in results:
            for metric, (_, higher_is_better) in METRICS.items():
                median = bootstrap_ci(result.runs[w][metric], level=level)
                diff = verdict_text = None
                if result is not first:
                    diff = paired_difference(
                        first.rounds[w][metric], result.rounds[w][metric], level
                    )
                    verdict_text = _words(verdict(diff, higher_is_better, min_effect), metric)
                rows.append(Row(w, result.label, metric, median, diff, verdict_text))
    return rows


def _words(v: str, metric: str) -> str:
    if metric == "output_tokens":
        return {"faster": "longer output", "slower": "shorter output"}.get(v, v)
    return v
