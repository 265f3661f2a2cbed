"""Measuring a loaded model: every workload after warm-up, repeated, adaptively where it pays."""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sweeper import stats
from sweeper.measurement import Run, WorkloadResult

if TYPE_CHECKING:
    from sweeper.backends import Backend
    from sweeper.workloads import Sampling, Workload

log = logging.getLogger("sweeper")
#: Times a run that overlapped another model's load or unload (LM Studio) is measured again
#: before it is kept, marked ``disturbed`` in its backend stats.
DISTURBED_REDO = 2


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


def measure_workloads(
    backend: Backend,
    workloads: Sequence[Workload],
    sampling: Sampling,
    repeats: int,
    warmup: int,
    on_run: Callable[[str, int, Run], None] | None = None,
    adaptive: Adaptive | None = None,
    warmup_tokens: int | None = None,
) -> dict[str, WorkloadResult]:
    """Run every workload ``warmup`` times (discarded; capped at ``warmup_tokens``: a short
    generation absorbs a process's one-off costs) then ``repeats`` times on a loaded model,
    and, with ``adaptive``, more times while the result may matter and is still imprecise."""
    results: dict[str, WorkloadResult] = {}
    for w in workloads:
        warm: list[Run] = []
        runs: list[Run] = []
        short = dataclasses.replace(w, max_tokens=min(w.max_tokens, warmup_tokens or w.max_tokens))
        i = redone = 0
        while i < warmup + repeats or (adaptive and adaptive.more(w.name, runs)):
            run = backend.generate(short if i < warmup else w, sampling)
            disturbed = run.backend_stats.get("disturbed") if i >= warmup else None
            if disturbed and redone < DISTURBED_REDO:  # another model's load shared the machine
                redone += 1
                log.warning("%s run %d disturbed (%s): measured again", w.name, i, disturbed)
                continue
            if redone:  # kept: this run is clean, or still disturbed and marked so
                stats = {**run.backend_stats, "measured_again_after_disturbance": redone}
                run, redone = dataclasses.replace(run, backend_stats=stats), 0
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
