"""What a night buys: the cost of one screening, one full measurement and the confirmation, and
how many configurations fit in a time budget.

Costs come from the study's own baseline when it has been measured (load time, decode and
prompt speed), else from stated assumptions. A generation of n tokens after a prompt of p
tokens costs p / prompt speed + n / decode speed; a load costs the load time.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sweeper.config import StudyConfig
from sweeper.records import TrialRecord, baseline

#: Assumed prompt processing speed, as a multiple of decode speed, when the study has not
#: measured it yet (prompt tokens are processed in batches: an order of magnitude faster).
PREFILL_FACTOR = 20.0
#: Tokens a workload's prompt is assumed to have before it has been measured.
PROMPT_TOKENS = 64
#: The highest assumed speeds a plan takes (far above any machine: a typo is said, not planned).
MAX_ASSUMED_TOK_S = 1e6
MAX_ASSUMED_LOAD_S = 86400.0
#: A trial's time limit derived from a plan: this many times one full measurement, so that a
#: slower configuration than the baseline (or a busy machine) still finishes.
TIMEOUT_MARGIN = 2.0


@dataclass(frozen=True)
class Speeds:
    """What a generation costs on this machine and model."""

    load_s: float
    decode_tok_s: float
    prefill_tok_s: float
    #: "measured" (the study's baseline) or "assumed"
    source: str


@dataclass(frozen=True)
class NightPlan:
    speeds: Speeds
    screening_s: float
    #: one full measurement at ``speeds`` (the baseline's)
    full_s: float
    #: the confirmation at its most rounds: the baseline at ``speeds``, candidates at ``ahead``
    confirmation_s: float
    #: the finalists measured in full (at most), and what they and the confirmation take
    finalists: int
    reserve_s: float
    space_size: int | None
    trials: int
    timeout_s: float | None
    #: configurations screened (or measured, without screening) that fit the budget
    screening_trials: int
    full_measurements: int
    warnings: list[str] = field(default_factory=list)
    #: what the finalists and the confirmation's candidates are priced at: their screened
    #: speeds once the screening has named them, else None (the baseline's, ``speeds``)
    ahead: Speeds | None = None
    #: one finalist's full measurement (at ``ahead``, with adaptive repeats at their cap)
    finalist_full_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["speeds"] = dict(self.speeds.__dict__)
        d["ahead"] = dict(self.ahead.__dict__) if self.ahead else None
        return d


def speeds(
    config: StudyConfig,
    recs: Sequence[TrialRecord] = (),
    assume_tok_s: float | None = None,
    assume_load_s: float | None = None,
    assume_prefill_tok_s: float | None = None,
) -> Speeds | None:
    """The baseline's measured speeds, else the assumed ones (None: neither is known)."""
    base = baseline(recs)
    if base is not None and base.workloads and base.load_s:
        decode = statistics.median(w.tok_s.median for w in base.workloads.values())
        prefill = statistics.median(
            w.prompt_tokens / w.ttft_s.median
            for w in base.workloads.values()
            if w.ttft_s.median > 0
        )
        return Speeds(base.load_s, decode, max(prefill, decode), "measured")
    if assume_tok_s is None:
        return None
    prefill = assume_prefill_tok_s or assume_tok_s * PREFILL_FACTOR
    return Speeds(assume_load_s or 0.0, assume_tok_s, prefill, "assumed")


def plan(
    config: StudyConfig,
    s: Speeds,
    recs: Sequence[TrialRecord] = (),
    timeout_s: float | None = None,
    trials: int | None = None,
    ahead: Speeds | None = None,
) -> NightPlan:
    """The night at speeds ``s`` (the baseline's, or assumed). ``ahead``: what the finalists
    and the confirmation's candidates run at, once the screening has named them (their own
    screened speeds: the article's Before decodes at 10 tok/s, its finalists at 50); the
    baseline's until then. The confirmation's baseline runs at ``s`` either way."""
    m, c = config.measure, config.confirm
    base = baseline(recs)
    prompt = {
        w.name: float(base.workloads[w.name].prompt_tokens)
        if base and w.name in base.workloads
        else PROMPT_TOKENS
        for w in config.workloads
    }
    expected = {
        w.name: base.workloads[w.name].output_tokens.median
        if base and w.name in base.workloads
        else float(w.max_tokens)
        for w in config.workloads
    }

    def gen(prompt_tokens: float, tokens: float, at: Speeds = s) -> float:
        return prompt_tokens / at.prefill_tok_s + tokens / at.decode_tok_s

    def warm(at: Speeds) -> float:
        return m.warmup * sum(gen(prompt[w], min(m.probe_tokens, expected[w]), at) for w in prompt)

    def workloads(at: Speeds) -> float:
        return sum(gen(prompt[w], expected[w], at) for w in prompt)

    def full(at: Speeds, repeats: int = m.repeats) -> float:
        return at.load_s + warm(at) + repeats * workloads(at)

    def one_load(at: Speeds) -> float:  # a confirmation round loads each configuration once
        return at.load_s + warm(at) + workloads(at)

    full_s = full(s)
    deepest = max(prompt[w] + expected[w] for w in prompt)
    screening_s = (
        s.load_s
        + gen(min(prompt.values()), m.probe_tokens)  # warm-up
        + sum(gen(prompt[w], m.probe_tokens) for w in prompt)
        + sum(gen(d, m.probe_tokens) for d in _depths(min(prompt.values()), deepest, m.depths))
    )
    if ahead is None:
        confirmation_s = c.rounds * ((1 + c.candidates) * one_load(s))
    else:
        confirmation_s = c.rounds * (one_load(s) + c.candidates * one_load(ahead))
    finalist_full_s = full(ahead or s, m.repeat_cap)  # finalists sit near a front
    finalists = m.promote * len(config.workloads) if m.screening else 0  # at most
    reserve_s = finalists * finalist_full_s + confirmation_s
    per_trial = screening_s if m.screening else full_s
    size = config.space.size()
    target = trials or config.budget.trials
    warnings = []
    if timeout_s is not None:
        fit = max(0, math.floor((timeout_s - reserve_s) / per_trial)) if per_trial > 0 else target
        if reserve_s > timeout_s:
            warnings.append(
                f"the finalists and the confirmation alone take {_hours(reserve_s)}, more than "
                f"the budget of {_hours(timeout_s)}"
            )
    else:
        fit = target
    limit = config.budget.trial_timeout_s
    if full_s > limit:
        warnings.append(
            f"one full measurement takes {_hours(full_s)}, more than [budget] trial_timeout "
            f"({_hours(limit)}): every trial measured in full would time out; set "
            f'trial_timeout = "{suggested_timeout(full_s)}"'
        )
    count = min(fit, target)
    if size is not None and count < size:
        warnings.append(
            f"{count} of the space's {size} configurations fit: it will be sampled, not covered"
        )
    return NightPlan(
        speeds=s,
        screening_s=screening_s,
        full_s=full_s,
        confirmation_s=confirmation_s,
        finalists=finalists,
        reserve_s=reserve_s,
        space_size=size,
        trials=target,
        timeout_s=timeout_s,
        screening_trials=count if m.screening else 0,
        full_measurements=finalists + 1 if m.screening else count,
        warnings=warnings,
        ahead=ahead,
        finalist_full_s=finalist_full_s,
    )


def suggested_timeout(full_s: float) -> str:
    """A trial time limit for a full measurement of ``full_s``: ``TIMEOUT_MARGIN`` times it,
    in whole minutes, at least the default 30 minutes."""
    return f"{max(30, math.ceil(full_s * TIMEOUT_MARGIN / 60))}m"


def baseline_overrun(
    config: StudyConfig, recs: Sequence[TrialRecord], night: NightPlan | None
) -> str | None:
    """Why the study's baseline cannot finish within its trial time limit, with the fix, in
    one line: its measured speeds say so, or it already ran past the limit; None otherwise
    (nothing is known before the first trial)."""
    limit = config.budget.trial_timeout_s
    fix = f"set [budget] trial_timeout in {config.path}"
    if night is not None and night.speeds.source == "measured" and night.full_s > limit:
        return (
            f"the baseline's full measurement takes {_hours(night.full_s)} here, more than "
            f'trial_timeout ({_hours(limit)}); {fix} to "{suggested_timeout(night.full_s)}"'
        )
    # a baseline that ran past a limit at least as long as today's will do so again
    timed_out = [
        r
        for r in recs
        if r.is_baseline
        and r.failure_reason == "timeout"
        and r.datetime_start is not None
        and r.datetime_complete is not None
        and (r.datetime_complete - r.datetime_start).total_seconds() >= limit
    ]
    if night is None and timed_out:
        return (
            f"the baseline ran past trial_timeout ({_hours(limit)}) before; {fix} to at least "
            f'"{suggested_timeout(limit)}" (or plan it: sweeper plan --assume-tok-s ...)'
        )
    return None


def _depths(shallowest: float, deepest: float, n: int) -> list[float]:
    step = (deepest - shallowest) / n
    return [shallowest + step * (i + 1) for i in range(n)]


def _at(ahead: Speeds | None) -> str:
    """Where the finalists are priced at their own screened speeds, which."""
    return f", at their screened {ahead.decode_tok_s:.1f} tok/s" if ahead else ""


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def summary(p: NightPlan) -> str:
    """The plan in one line, as `sweeper run` prints it when it starts."""
    s = p.speeds
    basis = (
        f"{s.source} {s.decode_tok_s:.1f} tok/s, prompt {s.prefill_tok_s:.0f} tok/s, "
        f"load {s.load_s:.1f} s"
    )
    if p.screening_trials:
        what = (
            f"screening {p.screening_trials} configurations ({_hours(p.screening_s)} each), "
            f"then up to {p.finalists} finalists in full ({_hours(p.finalist_full_s)} each"
            f"{_at(p.ahead)})"
        )
    else:
        what = f"{p.full_measurements} configurations in full ({_hours(p.full_s)} each)"
    budget = f" in {_hours(p.timeout_s)}" if p.timeout_s else ""
    return (
        f"plan{budget}: {what} and the confirmation ({_hours(p.confirmation_s)}); {basis}"
        + "".join(f"; warning: {w}" for w in p.warnings)
    )
