"""The output guards: a "faster" run that is only a shorter one (``truncated``), or one whose
output differs from the baseline's early on (``diverged``: with fixed, greedy sampling a
change in the numbers the settings produce, such as K/V quantization or flash attention)."""

from __future__ import annotations

from dataclasses import dataclass

from sweeper.config import Measure
from sweeper.errors import FailureReason
from sweeper.measurement import WorkloadResult, divergence
from sweeper.records import StoredWorkload


@dataclass(frozen=True)
class Guarded:
    """One workload's guards: constraint values (> 0: violated) and what they measured."""

    output_ratio: float
    #: first character where the output differs from the baseline's (None: no baseline yet)
    prefix: int | None
    constraints: dict[FailureReason, float]
    problems: dict[FailureReason, str]


def shorter(ratio: float, hit_cap: bool, min_ratio: float) -> float:
    """How far an output below ``min_ratio`` of the baseline's is (0: fine). A run that hit
    the cap is never short: its length was not the model's choice."""
    return 0.0 if hit_cap else round(max(0.0, min_ratio - ratio), 4)


def check(
    name: str, result: WorkloadResult, ref: StoredWorkload | None, is_ref: bool, m: Measure
) -> Guarded:
    """The guards of one workload. A reasoning model's answer and reasoning are compared
    apart: the answer's length is what ``truncated`` guards (reasoning less is not writing
    less), and a run the cap ended while reasoning has no answer at all."""
    text = result.runs[0].text
    ratio, prefix = 1.0, None
    if ref is not None:
        median = ref.answer_tokens
        ratio = result.answer_tokens.median / median if median else 1.0
        prefix = divergence(ref.text, text)
    elif is_ref:
        prefix = len(text)  # the reference itself
    need = m.min_prefix_chars
    gap = float(need - prefix) if need > 0 and prefix is not None and prefix < need else 0.0
    truncated = shorter(ratio, result.hit_cap, m.min_output_ratio)
    no_answer = 0.0 if result.answered else 1.0
    problems = {}
    if no_answer:
        problems[FailureReason.NO_ANSWER] = f"{name}: no answer: cap reached while reasoning"
    if truncated > 0:
        problems[FailureReason.TRUNCATED] = f"{name} {ratio:.0%} of the baseline's output"
    if gap > 0:
        problems[FailureReason.DIVERGED] = (
            f"{name} differs from the baseline's output at character {prefix}"
        )
    return Guarded(
        ratio,
        prefix,
        {
            FailureReason.DIVERGED: gap,
            FailureReason.TRUNCATED: truncated,
            FailureReason.NO_ANSWER: no_answer,
        },
        problems,
    )
