"""Pure values of a measurement: one generation (``Run``), a workload's repeats, a trial.

Definitions used everywhere in sweeper:
- time to first token (TTFT): from sending the request to the first generated token, so it
  includes prompt processing;
- decode tok/s: (output tokens - 1) / (time of last token - time of first token);
- output tokens: tokens the model generated, counted one by one (not stream chunks).
"""

from __future__ import annotations

import dataclasses
import datetime
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sweeper.backends import Loaded


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
    #: the generated text (kept for the first measured run only: the divergence check); a
    #: reasoning model's answer only
    text: str = ""
    #: a reasoning model's tokens before its answer began (tags included)
    reasoning_tokens: int = 0
    #: from the request to the first token of the answer: what the person waiting feels
    #: (None in runs stored before it was measured: their TTFT)
    time_to_answer_s: float | None = None
    #: the answer began before the cap ended the run (False: the cap came while reasoning)
    answered: bool = True

    @property
    def answer_tokens(self) -> int:
        return self.output_tokens - self.reasoning_tokens

    @property
    def tta_s(self) -> float:
        return self.ttft_s if self.time_to_answer_s is None else self.time_to_answer_s

    @staticmethod
    def from_timestamps(
        start: float,
        token_times: Sequence[float],
        prompt_tokens: int,
        stop_reason: str,
        end: float,
        backend_stats: dict[str, Any] | None = None,
        text: str = "",
        reasoning_tokens: int = 0,
        answered: bool = True,
    ) -> Run:
        """Build a run from the perf_counter() time of the request and of each output token
        (the answer's first token being the one after ``reasoning_tokens``)."""
        n = len(token_times)
        ttft = token_times[0] - start if n else end - start
        span = token_times[-1] - token_times[0] if n > 1 else 0.0
        tok_s = (n - 1) / span if span > 0 else 0.0
        tta = token_times[reasoning_tokens] - start if answered and reasoning_tokens < n else None
        return Run(
            ttft_s=ttft,
            decode_tok_s=tok_s,
            output_tokens=n,
            prompt_tokens=prompt_tokens,
            stop_reason=stop_reason,
            total_s=end - start,
            backend_stats=dict(backend_stats or {}),
            text=text,
            reasoning_tokens=reasoning_tokens,
            time_to_answer_s=tta if answered else None,
            answered=answered,
        )

    def to_dict(self) -> dict[str, Any]:
        """As stored on a trial: everything but the text."""
        d = dataclasses.asdict(self)
        del d["text"]
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Run:
        names = {f.name for f in dataclasses.fields(Run)}
        return Run(**{k: v for k, v in d.items() if k in names})


def gpu_layers(runs: Iterable[Run]) -> float | None:
    """The layers the engine said it put on the GPU for a load (LM Studio's
    ``num_gpu_layers``), from the first of its runs that says so: an engine update can change
    it for the same settings."""
    for run in runs:
        value = run.backend_stats.get("num_gpu_layers")
        if value is not None:
            return float(value)
    return None


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

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Spread:
        return Spread(d["median"], d["min"], d["max"], d["q1"], d["q3"], int(d["n"]))


class RunsOfAWorkload:
    """What a workload's runs say together, measured now or read back from storage."""

    runs: tuple[Run, ...]

    @property
    def tta_s(self) -> Spread:
        """Time to the answer's first token (the TTFT of a model that does not reason)."""
        return Spread.of([r.tta_s for r in self.runs])

    @property
    def answered(self) -> bool:
        """Every run's answer began before the cap."""
        return all(r.answered for r in self.runs)


@dataclass(frozen=True)
class WorkloadResult(RunsOfAWorkload):
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

    @property
    def reasoning_tokens(self) -> Spread:
        return Spread.of([float(r.reasoning_tokens) for r in self.runs])

    @property
    def answer_tokens(self) -> Spread:
        return Spread.of([float(r.answer_tokens) for r in self.runs])


@dataclass(frozen=True)
class Probe:
    """One short generation: decode speed at ``depth`` (the tokens in the context when
    decoding started, as the engine counted them) and the time to its first token."""

    depth: int
    ttft_s: float
    decode_tok_s: float
    tokens: int

    @staticmethod
    def of(run: Run) -> Probe:
        return Probe(run.prompt_tokens, run.ttft_s, run.decode_tok_s, run.output_tokens)


@dataclass(frozen=True)
class Estimate:
    """A workload's expected numbers from a screening."""

    ttft_s: float
    prompt_tokens: int
    expected_tokens: float
    #: the expected output over the time its decoding takes
    mean_tok_s: float
    completion_s: float
    #: when the answer is expected to begin: TTFT, and a reasoning model's thinking at the
    #: baseline's length (the TTFT of a model that does not reason)
    answer_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Screen:
    """A screening's probes and the estimates made of them."""

    prompts: dict[str, Probe]
    depths: list[Probe]
    estimates: dict[str, Estimate]


@dataclass(frozen=True)
class TrialOutcome:
    """Everything a worker measured for one load configuration: the workloads in full, a
    screening, or both."""

    applied: Loaded
    load_s: float
    workloads: dict[str, WorkloadResult]
    gen_s: float
    peak_rss_mb: float | None = None
    gpu_mem_mb: float | None = None
    screen: Screen | None = None


def divergence(a: str, b: str) -> int:
    """The index of the first character where two outputs differ (the shorter one's length if
    one is a prefix of the other). With fixed, greedy sampling, a change here is a change in
    the numbers the settings produce (K/V quantization, flash attention): a cheap quality hint."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


@dataclass(frozen=True)
class CandidateResult:
    """One candidate's side-by-side measurement against the baseline in a confirmation.
    Percentages are relative to the baseline, paired by round: [estimate, low, high]."""

    trial: int
    settings: dict[str, Any]
    #: "faster", "slower", "no detectable difference" (on expected completion time), or
    #: "shorter output" (faster, if at all, only because it wrote less)
    verdict: str
    #: expected completion time (the decision's measure), at the study's level
    completion_pct: list[float]
    #: the level the verdict was decided at (stricter than the study's when the confirmation
    #: looked early or tested several candidates)
    decision_level: float
    tok_s_pct: list[float]
    ttft_pct: list[float]
    #: the candidate's median output / the baseline's, over the rounds
    output_ratio: float
    stop_reasons: list[str]
    #: the layers the engine put on the GPU in the candidate's last load (where it says so)
    gpu_layers: float | None = None

    @staticmethod
    def from_dict(d: dict[str, Any]) -> CandidateResult:
        known = {f.name for f in dataclasses.fields(CandidateResult)}
        return CandidateResult(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Confirmation:
    """A workload's recommendation re-measured interleaved with the baseline: the only place a
    gain is claimed from."""

    workload: str
    #: when it ran (ISO 8601, local time)
    when: str
    rounds: int
    level: float
    baseline_settings: dict[str, Any]
    reference_tokens: float
    candidates: list[CandidateResult]
    #: the trial whose gain is confirmed (the fastest "faster" candidate), or None: keep the
    #: baseline
    chosen: int | None
    machine: str | None = None
    #: the engine's version it ran on (LM Studio's app and runtimes; see fingerprint.machine)
    engine: str | None = None
    #: when it ended, in seconds since the epoch (``when`` has whole seconds: too coarse to
    #: order it against an install made in the same second)
    at: float | None = None

    def ended(self) -> float:
        """When it ended, in seconds since the epoch: ``at``, or ``when`` where an earlier
        version stored no ``at``."""
        if self.at is not None:
            return self.at
        try:
            return datetime.datetime.fromisoformat(self.when).timestamp()
        except ValueError:
            return 0.0

    def candidate(self, trial: int) -> CandidateResult | None:
        return next((c for c in self.candidates if c.trial == trial), None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Confirmation:
        # a field another sweeper version wrote (rigs sharing a study) is left out, not fatal
        known = {f.name for f in dataclasses.fields(Confirmation)}
        fields = {k: v for k, v in d.items() if k in known}
        fields["candidates"] = [CandidateResult.from_dict(c) for c in d["candidates"]]
        return Confirmation(**fields)
