"""The two objectives of a workload, defined once for the sweep that optimises them and the
fronts that draw them: decode tok/s (higher is better) and the wait (lower is better), the time
to first token or, for a reasoning model, the time to its answer with the baseline's amount of
reasoning at this configuration's decode speed (no configuration is rewarded for reasoning
less by chance)."""

from __future__ import annotations

from collections.abc import Sequence

from sweeper.measurement import Estimate, Run, Spread


def reasoning(runs: Sequence[Run]) -> float:
    """Median tokens a reasoning model spent before its answer (0: it does not reason)."""
    return Spread.of([float(r.reasoning_tokens) for r in runs]).median if runs else 0.0


def wait(runs: Sequence[Run], baseline: Sequence[Run] | None) -> Spread | None:
    """Each run's time to first token plus the baseline's reasoning (the trial's own, for the
    baseline itself) at the run's decode speed; None for a model that does not reason: its
    wait is its time to first token."""
    thinking = reasoning(baseline if baseline is not None else runs)
    if not thinking:
        return None
    return Spread.of(
        [r.ttft_s + thinking / r.decode_tok_s for r in runs if r.decode_tok_s > 0] or [float("inf")]
    )


def values(runs: Sequence[Run], baseline: Sequence[Run] | None) -> list[float]:
    """The workload's two objective values: median decode tok/s, median wait."""
    waited = wait(runs, baseline) or Spread.of([r.ttft_s for r in runs])
    return [Spread.of([r.decode_tok_s for r in runs]).median, waited.median]


def screened(e: Estimate) -> list[float]:
    """A screened trial's objective values, estimated from its probes: mean decode tok/s over
    the workload's length, and the wait (to the answer, for a reasoning model)."""
    return [e.mean_tok_s, screened_wait(e)]


def screened_wait(e: Estimate) -> float:
    return e.ttft_s if e.answer_s is None else e.answer_s
