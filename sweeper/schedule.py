"""What the sweep runs next, decided from the stored trials: the baseline first, interrupted
trials again, the baseline again when due (drift), the screening's finalists in full, and
proposals already measured answered from storage. Pure functions over trial records."""

from __future__ import annotations

import datetime
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeper import plan, stats
from sweeper.config import Measure, StudyConfig
from sweeper.errors import FailureReason, StudyFileError
from sweeper.fronts import Point, pareto_front, points
from sweeper.measurement import TrialOutcome
from sweeper.recommend import expected_completion_s
from sweeper.records import FULL, SCREEN, Tag, TrialRecord
from sweeper.settings import LoadSettings, check_value

_RETRIED = (FailureReason.INTERRUPTED, FailureReason.KILLED, FailureReason.ENGINE_LOST)
#: A baseline re-run this much slower or faster (and outside the noise) is drift.
DRIFT_MIN = 0.03


def sampler(seed: int, target: int) -> optuna.samplers.BaseSampler:
    """The sampler that proposes configurations for a budget of ``target`` trials (chosen by
    replaying samplers on a measured table: benchmarks/search.py)."""
    return optuna.samplers.TPESampler(
        seed=seed, multivariate=True, n_startup_trials=max(4, min(10, target // 5))
    )


def baseline_params(config: StudyConfig, recs: Sequence[TrialRecord]) -> dict[str, Any] | None:
    """The baseline's parameters (those inside the space) when it has not been queued yet."""
    if any(r.tag == Tag.BASELINE for r in recs):
        return None
    dims = config.space.dimensions
    return {
        name: value
        for name, value in config.baseline.to_dict().items()
        if name in dims and dims[name].contains(value)
    }


def unset_swept(
    config: StudyConfig, settings: LoadSettings, applied: Mapping[str, Any]
) -> dict[str, Any]:
    """Swept settings that ``settings`` (the baseline's) leaves to the engine, as the engine
    reports it applied them (only values sweeper could send back as they are)."""
    out = {}
    for name in config.space.dimensions:
        value = applied.get(name)
        if getattr(settings, name) is None and value is not None:
            try:
                check_value(name, value, "applied")
            except StudyFileError:
                continue
            out[name] = value
    return out


def pinned_baseline(recs: Sequence[TrialRecord]) -> dict[str, Any]:
    """The values the first measured baseline resolved (see ``unset_swept``): every later run
    of the baseline, the confirmation's included, sends them explicitly."""
    first = next((r for r in recs if r.is_baseline and r.resolved), None)
    if first is None:
        return {}
    return {name: first.settings[name] for name in first.resolved if name in first.settings}


def earlier_baseline(recs: Sequence[TrialRecord], number: int) -> bool:
    """Another worker's baseline (not failed) came before trial ``number``."""
    return any(
        r.number < number and r.tag == Tag.BASELINE and r.state != TrialState.FAIL for r in recs
    )


def surplus(recs: Sequence[TrialRecord], number: int, limit: int) -> bool:
    """Whether trials begun before trial ``number``, on every worker, already make the target.
    Optuna's trial-count callback races between workers (each counts, then both ask for a
    trial: 13 trials of 12 were seen with two); the trial numbers settle it, the later yields."""
    begun = (TrialState.COMPLETE, TrialState.RUNNING)
    return sum(r.number < number and r.state in begun for r in recs) >= limit


def retries(recs: Sequence[TrialRecord]) -> list[TrialRecord]:
    """Trials interrupted (Ctrl-C, SIGTERM), killed or cut off by an engine that did not come
    back, and not yet run again (once)."""
    retried = {r.retry_of for r in recs}
    return [
        r
        for r in recs
        if r.state == TrialState.FAIL and r.number not in retried and r.failure_reason in _RETRIED
    ]


def orphans(
    recs: Sequence[TrialRecord],
    host: str,
    alive: Callable[[int, datetime.datetime | None], bool],
) -> list[TrialRecord]:
    """RUNNING trials that a sweeper process on ``host`` started and that process is gone
    (``alive(pid, trial started)`` says False): the service or a terminal was killed. Other
    machines' trials are left to the storage's heartbeat, which retries them after its grace."""
    found = []
    for r in recs:
        if r.state != TrialState.RUNNING or not r.worker:
            continue
        worker_host, _, pid = r.worker.rpartition(":")
        if worker_host == host and pid.isdigit() and not alive(int(pid), r.datetime_start):
            found.append(r)
    return found


def drift_check_due(
    recs: Sequence[TrialRecord], m: Measure, now: datetime.datetime
) -> dict[str, Any] | None:
    """The baseline's parameters when it is due to run again: after
    ``drift_check_every_trials`` trials or ``drift_check_every_s`` seconds since the last run of
    it, whichever comes first."""
    if m.drift_check_every_trials is None and m.drift_check_every_s is None:
        return None
    baseline_runs = [r for r in recs if r.is_baseline_run]
    if not baseline_runs or any(r.state == TrialState.WAITING for r in baseline_runs):
        return None
    last = baseline_runs[-1]
    since = [r for r in recs if r.number > last.number and r.state.is_finished()]
    by_count = m.drift_check_every_trials is not None and len(since) >= m.drift_check_every_trials
    by_time = (
        m.drift_check_every_s is not None
        and last.datetime_complete is not None
        and (now - last.datetime_complete).total_seconds() >= m.drift_check_every_s
    )
    return baseline_runs[0].params if by_count or by_time else None


def drift(base: TrialRecord, outcome: TrialOutcome) -> dict[str, list[float]]:
    """Workloads whose decode speed moved beyond the noise (and by ``DRIFT_MIN`` or more)
    between the baseline and its re-run: % [estimate, low, high]."""
    moved = {}
    for w, result in outcome.workloads.items():
        ref = base.workloads[w].runs_tok_s
        diff = stats.relative_difference(ref, [r.decode_tok_s for r in result.runs])
        if diff.excludes_zero() and abs(diff.estimate) >= DRIFT_MIN:
            moved[w] = [round(v * 100, 2) for v in diff.to_list()]
    return moved


def finalists(config: StudyConfig, recs: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The screened trials to measure in full: per workload, on the screening front and within
    ``promote_margin`` of the best expected completion time (or within the screening's own
    noise, where the baseline's screenings measured a wider one), at most ``promote``
    (settings already measured or queued in full count among them and are not queued again)."""
    m = config.measure
    by_number = {r.number: r for r in recs}
    taken = [r.settings for r in recs if r.fidelity == FULL and r.settings]
    taken += [by_number[r.promoted_from].settings for r in recs if r.promoted_from is not None]
    out: list[TrialRecord] = []
    for w in config.workloads:
        front = pareto_front(points(recs, w.name, SCREEN))
        if not front:
            continue
        best = min(_completion(p) for p in front)
        margin = max(m.promote_margin, screening_noise(recs, w.name))
        close = sorted(
            (p for p in front if _completion(p) <= best * (1 + margin)),
            key=_completion,
        )
        for p in close[: m.promote]:
            if p.settings not in taken:
                out.append(by_number[p.trial])
                taken.append(p.settings)
    return out


def screening_noise(recs: Sequence[TrialRecord], workload: str) -> float:
    """How far apart one configuration's screenings are: the relative spread of the expected
    completion times of the baseline's own screenings (the first and its re-runs), 0 with
    fewer than two. On a 2-core machine two screenings of one configuration differ by several
    per cent (benchmarks/search.py measures it): closer than that, a screening cannot rank."""
    times = [
        r.estimates[workload].completion_s
        for r in recs
        if r.is_baseline_run and r.state == TrialState.COMPLETE and workload in r.estimates
    ]
    times = [t for t in times if t > 0]
    return max(times) / min(times) - 1 if len(times) >= 2 else 0.0


def measured_before(
    recs: Sequence[TrialRecord], number: int, settings: LoadSettings, fidelity: str
) -> TrialRecord | None:
    """An earlier successful trial of the same settings measured at ``fidelity`` (or in full,
    which answers a screening too). A failed one is not reused: a dropped socket or a busy
    GPU may not happen twice."""
    wanted = settings.to_dict()
    for r in recs:
        same = r.number < number and r.settings == wanted and r.duplicate_of is None
        ok = r.state == TrialState.COMPLETE and not r.failure_reason
        if same and ok and r.fidelity in (fidelity, FULL):
            return r
    return None


def reserve_s(config: StudyConfig, recs: Sequence[TrialRecord]) -> float:
    """Time to keep for the finalists and the confirmation (0 until speeds are known), priced
    at the speeds of the configurations that will run them (``finalist_speeds``). Priced at
    the baseline's alone, an 8-hour night on the article's PC (a Before at 10 tok/s, finalists
    at 50) ended 1.4 hours early, time the screening, where the misses came from, could have
    had (benchmarks/rig_search.py, simulated)."""
    speeds = plan.speeds(config, recs)
    return night(config, speeds, recs).reserve_s if speeds else 0.0


def night(
    config: StudyConfig,
    speeds: plan.Speeds,
    recs: Sequence[TrialRecord],
    timeout_s: float | None = None,
    trials: int | None = None,
) -> plan.NightPlan:
    """The night's plan as the sweep keeps to it (what `sweeper run` and `sweeper plan` show):
    the finalists and the confirmation priced at ``finalist_speeds`` once there are any."""
    return plan.plan(config, speeds, recs, timeout_s, trials, ahead=finalist_speeds(config, recs))


def finalist_speeds(config: StudyConfig, recs: Sequence[TrialRecord]) -> plan.Speeds | None:
    """What the finalists the screening would promote now were screened at: each one's speeds
    over its workloads as `plan.speeds` takes the baseline's (the median), and the slowest of
    them on each count (load, decode, prompt). Their full measurements and the confirmation's
    candidates will run at about that. None while the screening has named none (then the
    baseline's speeds are the estimate), or where a finalist's screening lacks a number."""
    loads, decode, prefill = [], [], []
    for r in finalists(config, recs):
        estimates = list(r.estimates.values())
        if r.load_s is None or not estimates or any(e.ttft_s <= 0 for e in estimates):
            return None
        loads.append(r.load_s)
        decode.append(statistics.median(e.mean_tok_s for e in estimates))
        prefill.append(statistics.median(e.prompt_tokens / e.ttft_s for e in estimates))
    if not decode or min(decode) <= 0:
        return None
    return plan.Speeds(max(loads), min(decode), max(min(prefill), min(decode)), "screened")


def _completion(p: Point) -> float:
    return expected_completion_s(p, p.output_tokens)
