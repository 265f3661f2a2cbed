"""Measurements: one generation (``Run``), a workload's repeats, and a whole trial's outcome.

Definitions used everywhere in sweeper:
- time to first token (TTFT): from sending the request to the first generated token, so it
  includes prompt processing;
- decode tok/s: (output tokens - 1) / (time of last token - time of first token);
- output tokens: tokens the model generated, counted one by one (not stream chunks).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sweeper import stats

if TYPE_CHECKING:
    from sweeper.backends import Backend
    from sweeper.workloads import Sampling, Workload

log = logging.getLogger("sweeper")


@dataclass(frozen=True)
class Run:
    """One generation of one workload."""

    ttft_s: float
    decode_tok_s: float
    output_tokens: int
    prompt_tokens: int
    stop_reason: str  # "eos", "max_tokens", "context_length", or a backend's own word
    total_s: float
    backend_stats: dict[str, Any] = field(default_factory=dict)
    #: the generated text (kept for the first measured run only: the divergence check)
    text: str = ""

    @staticmethod
    def from_timestamps(
        start: float,
        token_times: Sequence[float],
        prompt_tokens: int,
        stop_reason: str,
        end: float,
        backend_stats: dict[str, Any] | None = None,
        text: str = "",
    ) -> Run:
        """Build a run from the perf_counter() time of the request and of each output token."""
        n = len(token_times)
        ttft = token_times[0] - start if n else end - start
        span = token_times[-1] - token_times[0] if n > 1 else 0.0
        tok_s = (n - 1) / span if span > 0 else 0.0
        return Run(
            ttft_s=ttft,
            decode_tok_s=tok_s,
            output_tokens=n,
            prompt_tokens=prompt_tokens,
            stop_reason=stop_reason,
            total_s=end - start,
            backend_stats=dict(backend_stats or {}),
            text=text,
        )


@dataclass(frozen=True)
class Spread:
    """Median and spread of repeated measurements."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    n: int

    @staticmethod
    def of(values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no values")
        q1, q3 = (
            statistics.quantiles(values, n=4, method="inclusive")[::2]
            if len(values) > 1
            else (values[0], values[0])
        )
        return Spread(statistics.median(values), min(values), max(values), q1, q3, len(values))


@dataclass(frozen=True)
class WorkloadResult:
    """All measured runs of one workload in one trial (warm-up kept apart)."""

    name: str
    max_tokens: int
    runs: tuple[Run, ...]
    warmup: tuple[Run, ...] = ()

    @property
    def tok_s(self) -> Spread:
        return Spread.of([r.decode_tok_s for r in self.runs])

    @property
    def ttft_s(self) -> Spread:
        return Spread.of([r.ttft_s for r in self.runs])

    @property
    def output_tokens(self) -> Spread:
        return Spread.of([float(r.output_tokens) for r in self.runs])

    @property
    def hit_cap(self) -> bool:
        """Every run stopped at the token cap: a short output is then not the model's choice."""
        return all(r.output_tokens >= self.max_tokens for r in self.runs)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary stored on the trial."""
        return {
            "tok_s": dataclasses.asdict(self.tok_s),
            "ttft_s": dataclasses.asdict(self.ttft_s),
            "output_tokens": dataclasses.asdict(self.output_tokens),
            "prompt_tokens": self.runs[0].prompt_tokens,
            "stop_reasons": sorted({r.stop_reason for r in self.runs}),
            "max_tokens": self.max_tokens,
            "hit_cap": self.hit_cap,
            "runs": [_without_text(r) for r in self.runs],
            "warmup": [_without_text(r) for r in self.warmup],
            "text": self.runs[0].text,
        }


@dataclass(frozen=True)
class TrialOutcome:
    """Everything a worker measured for one load configuration."""

    applied: dict[str, Any]
    load_s: float
    workloads: dict[str, WorkloadResult]
    gen_s: float
    peak_rss_mb: float | None = None
    gpu_mem_mb: float | None = None


@dataclass(frozen=True)
class Adaptive:
    """Extra repeats, only where they pay: a trial on, or within noise of, a workload's current
    front gets more runs until its tok/s median is known to ``target_ci`` (relative half-width
    of its 95% interval) or ``max_repeats`` is reached; a clearly dominated one stops at the
    screening repeats."""

    max_repeats: int
    target_ci: float
    #: workload -> current front as (tok/s median, TTFT median) pairs
    fronts: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def more(self, workload: str, runs: Sequence[Run]) -> bool:
        if len(runs) >= self.max_repeats or len(runs) < 2:
            return False
        tok = statistics.median(r.decode_tok_s for r in runs)
        ttft = statistics.median(r.ttft_s for r in runs)
        margin = self.target_ci
        for front_tok, front_ttft in self.fronts.get(workload, []):
            faster = front_tok > tok * (1 + margin) and front_ttft <= ttft * (1 + margin)
            sooner = front_ttft < ttft * (1 - margin) and front_tok >= tok * (1 - margin)
            if faster or sooner:
                return False  # dominated beyond the noise: precision here changes nothing
        ci = stats.bootstrap_ci([r.decode_tok_s for r in runs], n_boot=500)
        return (ci.high - ci.low) / 2 > self.target_ci * tok


def _without_text(run: Run) -> dict[str, Any]:
    d = dataclasses.asdict(run)
    del d["text"]
    return d


def divergence(a: str, b: str) -> int:
    """The index of the first character where two outputs differ (the shorter one's length if
    one is a prefix of the other). With fixed, greedy sampling, a change here is a change in
    the numbers the settings produce (K/V quantization, flash attention): a cheap quality hint."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def measure_workloads(
    backend: Backend,
    workloads: Sequence[Workload],
    sampling: Sampling,
    repeats: int,
    warmup: int,
    on_run: Callable[[str, int, Run], None] | None = None,
    adaptive: Adaptive | None = None,
) -> dict[str, WorkloadResult]:
    """Run every workload ``warmup`` times (discarded) then ``repeats`` times on a loaded model,
    and, with ``adaptive``, more times while the result may matter and is still imprecise."""
    results: dict[str, WorkloadResult] = {}
    for w in workloads:
        warm: list[Run] = []
        runs: list[Run] = []
        i = 0
        while i < warmup + repeats or (adaptive and adaptive.more(w.name, runs)):
            run = backend.generate(w, sampling)
            (warm if i < warmup else runs).append(run)
            log.debug(
                "%s run %d: %.1f tok/s, ttft %.3f s, %d tokens",
                w.name,
                i,
                run.decode_tok_s,
                run.ttft_s,
                run.output_tokens,
            )
            if on_run is not None:
                on_run(w.name, i - warmup, run)
            i += 1
        results[w.name] = WorkloadResult(w.name, w.max_tokens, tuple(runs), tuple(warm))
    return results


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start
