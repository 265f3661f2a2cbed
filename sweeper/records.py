"""The stored trial: its keys, tags and guards, written during a trial and read back typed.

The only module that touches Optuna's user attributes (of trials and of the study), so the
storage format has one owner; everything above reads ``TrialRecord``s. The format is the one
sweeper has always written: existing study databases read as they are.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.backends import stored_model_layers
from sweeper.errors import FailureReason
from sweeper.measurement import (
    Estimate,
    Run,
    RunsOfAWorkload,
    Screen,
    Spread,
    WorkloadResult,
    gpu_layers,
)
from sweeper.settings import LoadSettings


class Tag(enum.StrEnum):
    """What a trial is, beside an ordinary sampled configuration."""

    BASELINE = "baseline"
    #: the baseline run again to catch the machine changing under the sweep
    DRIFT_CHECK = "baseline-check"
    #: a second worker's run of the baseline (several workers started together)
    BASELINE_REPEAT = "baseline-repeat"
    #: a screened configuration promoted to a full measurement
    PROMOTED = "full"


#: How a trial was measured: every workload to its end, repeated ("full", as every trial was
#: before the staged sweep), or by screening probes at depth ("screen").
FULL, SCREEN = "full", "screen"


#: Per-workload output guards, each a constraint "<guard>:<workload>" on every trial (older
#: studies lack the last one: a missing constraint holds).
GUARDS = (FailureReason.TRUNCATED, FailureReason.DIVERGED, FailureReason.NO_ANSWER)
#: The constraint of a trial that could not be measured.
FAILED = "failed"


@dataclass(frozen=True)
class StoredWorkload(RunsOfAWorkload):
    """One workload's measurement in one trial, as stored."""

    tok_s: Spread
    ttft_s: Spread
    output_tokens: Spread
    prompt_tokens: int
    stop_reasons: list[str]
    max_tokens: int
    hit_cap: bool
    runs: tuple[Run, ...]
    warmup: tuple[Run, ...]
    #: the first measured run's output (the divergence check)
    text: str
    #: first character where the output differs from the baseline's
    divergence: int | None
    #: median answer / the baseline's (the whole output for a model that does not reason)
    output_ratio: float | None

    @property
    def reasoning_tokens(self) -> float:
        """Median tokens a reasoning model spent before its answer (0: it does not reason)."""
        return (
            Spread.of([float(r.reasoning_tokens) for r in self.runs]).median if self.runs else 0.0
        )

    @property
    def answer_tokens(self) -> float:
        return self.output_tokens.median - self.reasoning_tokens

    @property
    def runs_tok_s(self) -> list[float]:
        return [r.decode_tok_s for r in self.runs]

    @property
    def runs_ttft_s(self) -> list[float]:
        return [r.ttft_s for r in self.runs]


@dataclass(frozen=True)
class TrialRecord:
    """One trial, read back."""

    number: int
    state: TrialState
    params: dict[str, Any]
    constraints: dict[str, float]
    datetime_complete: datetime.datetime | None
    tag: str | None
    settings: dict[str, Any]
    applied: dict[str, Any]
    mismatch: dict[str, Any]
    failure_reason: str | None
    failure_detail: str
    workloads: dict[str, StoredWorkload]
    machine: dict[str, Any] | None
    worker: str | None
    retry_of: int | None
    drift: dict[str, list[float]]
    load_s: float | None
    peak_rss_mb: float | None
    values: list[float] | None = None
    fidelity: str = FULL
    #: workload -> the screening's estimate (screened trials, and the baseline)
    estimates: dict[str, Estimate] = field(default_factory=dict)
    #: a proposal of settings already measured at this fidelity: answered from that trial
    duplicate_of: int | None = None
    promoted_from: int | None = None
    datetime_start: datetime.datetime | None = None
    #: swept settings the baseline left to the engine, with the values it applied (in settings)
    resolved: tuple[str, ...] = ()

    @property
    def is_baseline(self) -> bool:
        return self.tag == Tag.BASELINE

    @property
    def is_baseline_run(self) -> bool:
        """A measurement of the baseline's settings on purpose (the first, or a re-run)."""
        return self.tag in (Tag.BASELINE, Tag.DRIFT_CHECK)

    def infeasible_reason(self, workload: str | None = None) -> str | None:
        """Why the trial is infeasible (for ``workload`` when given), or None."""
        if self.state != TrialState.COMPLETE:
            return self.failure_reason or self.state.name.lower()
        if self.constraints.get(FAILED, 0.0) > 0:
            return self.failure_reason or FAILED
        for guard in GUARDS:
            keys = (
                [f"{guard}:{workload}"]
                if workload
                else [k for k in self.constraints if k.startswith(f"{guard}:")]
            )
            if any(self.constraints.get(k, 0.0) > 0 for k in keys):
                return str(guard)
        return None

    @property
    def gpu_layers(self) -> float | None:
        """The layers the engine said it put on the GPU (LM Studio's ``num_gpu_layers``), when
        it said so: an engine update can change it for the same settings."""
        return gpu_layers(r for w in self.workloads.values() for r in w.runs)

    @property
    def model_layers(self) -> int | None:
        """The model's layer count as the engine reported it, when it did."""
        return stored_model_layers(self.applied)


def read(t: FrozenTrial) -> TrialRecord:
    a = t.user_attrs
    workloads = {
        key[2:]: _workload(value, a.get(f"output_ratio:{key[2:]}"))
        for key, value in a.items()
        if key.startswith("w:")
    }
    return TrialRecord(
        number=t.number,
        state=t.state,
        params=t.params,
        constraints=t.constraints,
        datetime_complete=t.datetime_complete,
        tag=a.get("tag"),
        settings=a.get("settings", {}),
        applied=a.get("applied", {}),
        mismatch=a.get("mismatch", {}),
        failure_reason=a.get("failure_reason"),
        failure_detail=str(a.get("failure_detail", "")),
        workloads=workloads,
        machine=a.get("machine") or None,
        worker=a.get("worker"),
        retry_of=a.get("retry_of"),
        drift=a.get("drift", {}),
        load_s=a.get("load_s"),
        peak_rss_mb=a.get("peak_rss_mb"),
        values=t.values,
        fidelity=a.get("fidelity", FULL),
        estimates={key[2:]: Estimate(**value) for key, value in a.items() if key.startswith("s:")},
        duplicate_of=a.get("duplicate_of"),
        promoted_from=a.get("promoted_from"),
        datetime_start=t.datetime_start,
        resolved=tuple(a.get("resolved", ())),
    )


def _workload(d: dict[str, Any], ratio: float | None) -> StoredWorkload:
    return StoredWorkload(
        tok_s=Spread.from_dict(d["tok_s"]),
        ttft_s=Spread.from_dict(d["ttft_s"]),
        output_tokens=Spread.from_dict(d["output_tokens"]),
        prompt_tokens=int(d.get("prompt_tokens", 0)),
        stop_reasons=list(d.get("stop_reasons", [])),
        max_tokens=int(d.get("max_tokens", 0)),
        hit_cap=bool(d.get("hit_cap", False)),
        runs=tuple(Run.from_dict(r) for r in d.get("runs", [])),
        warmup=tuple(Run.from_dict(r) for r in d.get("warmup", [])),
        text=d.get("text", ""),
        divergence=d.get("divergence"),
        output_ratio=ratio,
    )


def load(study: optuna.Study, states: Sequence[TrialState] | None = None) -> list[TrialRecord]:
    """Every trial of the study (of ``states`` when given), read once."""
    return [read(t) for t in study.get_trials(deepcopy=False, states=states)]


def complete(study: optuna.Study) -> int:
    """How many trials of the study are complete."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def baseline(records: Iterable[TrialRecord]) -> TrialRecord | None:
    """The measured baseline: the first complete trial tagged as such that was measured."""
    return next(
        (
            r
            for r in records
            if r.state == TrialState.COMPLETE and r.is_baseline and not r.failure_reason
        ),
        None,
    )


# ---- writing, on a running trial ------------------------------------------------------------


def enqueue(
    study: optuna.Study, params: dict[str, Any], tag: Tag | str | None = None, **attrs: Any
) -> None:
    """Queue a trial with these parameters (the baseline, a check, a retry)."""
    user_attrs = {k: v for k, v in attrs.items() if v is not None}
    if tag is not None:
        user_attrs["tag"] = str(tag)
    study.enqueue_trial(params, user_attrs=user_attrs)


def tag_of(trial: optuna.Trial) -> str | None:
    return trial.user_attrs.get("tag")


def retry_of(trial: optuna.Trial) -> int | None:
    value: int | None = trial.user_attrs.get("retry_of")
    return value


def set_tag(trial: optuna.Trial, tag: Tag) -> None:
    trial.set_user_attr("tag", str(tag))


def start(
    trial: optuna.Trial, settings: LoadSettings, worker: str, machine: dict[str, Any]
) -> None:
    trial.set_user_attr("settings", settings.to_dict())
    trial.set_user_attr("worker", worker)
    trial.set_user_attr("machine", machine)


def infeasible(
    trial: optuna.Trial,
    reason: FailureReason | str,
    detail: str,
    workloads: Sequence[str],
    wall_s: float | None = None,
) -> None:
    """A trial that could not be measured: its reason, and constraints that say so."""
    if wall_s is not None:
        trial.set_user_attr("wall_s", wall_s)
    trial.set_user_attr("failure_reason", str(reason))
    trial.set_user_attr("failure_detail", detail[:2000])
    trial.set_constraint(FAILED, 1.0)
    for w in workloads:
        for guard in GUARDS:
            trial.set_constraint(f"{guard}:{w}", 0.0)


def interrupted(trial: optuna.Trial) -> None:
    trial.set_user_attr("failure_reason", str(FailureReason.INTERRUPTED))


def engine_lost(trial: optuna.Trial) -> None:
    """The engine went away and did not come back in time: not the settings' failure."""
    trial.set_user_attr("failure_reason", str(FailureReason.ENGINE_LOST))


def resolved(trial: optuna.Trial, settings: LoadSettings, names: Sequence[str]) -> None:
    """The baseline's settings with the swept ones it left unset as the engine applied them:
    later runs of the baseline send these, so what an install changes never leaks into it."""
    trial.set_user_attr("settings", settings.to_dict())
    trial.set_user_attr("resolved", sorted(names))


def killed(study: optuna.Study, number: int) -> None:
    """A RUNNING trial whose process is gone becomes a FAIL that says so (and is run again)."""
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # ended meanwhile
        storage.set_trial_user_attr(trial_id, "failure_reason", str(FailureReason.KILLED))
        storage.set_trial_state_values(trial_id, TrialState.FAIL)


def measured(
    trial: optuna.Trial,
    applied: dict[str, Any],
    mismatch: dict[str, Any],
    timing: dict[str, float | None],
) -> None:
    """A trial that was measured: what the engine applied, and the trial's own numbers
    (load_s, gen_s, wall_s, overhead_s, peak_rss_mb, gpu_mem_mb)."""
    trial.set_user_attr("applied", applied)
    trial.set_user_attr("mismatch", mismatch)
    for key, value in timing.items():
        trial.set_user_attr(key, value)
    trial.set_constraint(FAILED, 0.0)


def workload(
    trial: optuna.Trial,
    result: WorkloadResult,
    divergence: int | None,
    output_ratio: float,
    guards: dict[FailureReason, float],
) -> None:
    """One workload's measurement, with its guards' constraint values (> 0: violated)."""
    runs = result.runs
    trial.set_user_attr(
        f"w:{result.name}",
        {
            "tok_s": result.tok_s.to_dict(),
            "ttft_s": result.ttft_s.to_dict(),
            "output_tokens": result.output_tokens.to_dict(),
            "reasoning_tokens": result.reasoning_tokens.to_dict(),
            "answer_tokens": result.answer_tokens.to_dict(),
            "tta_s": result.tta_s.to_dict(),
            "answered": result.answered,
            "prompt_tokens": runs[0].prompt_tokens,
            "stop_reasons": sorted({r.stop_reason for r in runs}),
            "max_tokens": result.max_tokens,
            "hit_cap": result.hit_cap,
            "runs": [r.to_dict() for r in runs],
            "warmup": [r.to_dict() for r in result.warmup],
            "text": runs[0].text,
            "divergence": divergence,
        },
    )
    trial.set_user_attr(f"output_ratio:{result.name}", round(output_ratio, 4))
    for guard, value in guards.items():
        trial.set_constraint(f"{guard}:{result.name}", value)


def guards_clear(trial: optuna.Trial, workloads: Sequence[str]) -> None:
    """A screened trial writes too little for the output guards: they hold (its finalist's
    full measurement checks them)."""
    for w in workloads:
        for guard in GUARDS:
            trial.set_constraint(f"{guard}:{w}", 0.0)


def fidelity(trial: optuna.Trial, value: str) -> None:
    trial.set_user_attr("fidelity", value)


def screened(trial: optuna.Trial, screen: Screen) -> None:
    """A screening: each workload's estimate, and the probes it was made of."""
    for w, e in screen.estimates.items():
        trial.set_user_attr(f"s:{w}", e.to_dict())
    trial.set_user_attr(
        "probes",
        {
            "prompts": {w: p.__dict__ for w, p in screen.prompts.items()},
            "depths": [p.__dict__ for p in screen.depths],
        },
    )


def duplicate(trial: optuna.Trial, source: TrialRecord) -> None:
    """Settings measured before at this fidelity: the trial is answered from ``source``
    (its values and constraints), nothing is measured again."""
    trial.set_user_attr("duplicate_of", source.number)
    trial.set_user_attr("fidelity", source.fidelity)
    for key, value in source.constraints.items():
        trial.set_constraint(key, value)


def flagged(trial: optuna.Trial, reason: FailureReason, detail: str) -> None:
    """A measured trial that a guard made infeasible: why, in words."""
    trial.set_user_attr("failure_reason", str(reason))
    trial.set_user_attr("failure_detail", detail)


def drift(trial: optuna.Trial, moved: dict[str, list[float]]) -> None:
    trial.set_user_attr("drift", moved)
