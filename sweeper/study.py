"""The study: an Optuna multi-objective study over load settings, and the trial objective.

Objectives, per workload: maximize decode tok/s and minimize time to first token (medians of
the repeats). Constraints (feasible when <= 0), set on every trial:
- ``failed``: the trial could not be measured (its reason is stored as ``failure_reason``);
- ``truncated:<workload>``: output below ``min_output_ratio`` x the baseline's without hitting
  the token cap, so a "faster" run is not merely a shorter one.
Infeasible trials are COMPLETE with dominated placeholder values (0 tok/s, 3600 s), never FAIL:
the sampler learns to avoid them, and a FAIL is reserved for an interrupted trial.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from sweeper import __version__, fingerprint, stats
from sweeper.errors import StorageError, TrialFailure
from sweeper.measure import Adaptive, TrialOutcome, divergence
from sweeper.settings import LoadSettings, invalid_combination
from sweeper.worker import Progress

if TYPE_CHECKING:
    from sweeper.studyfile import StudyConfig

log = logging.getLogger("sweeper")

_FINISHED = (TrialState.COMPLETE, TrialState.FAIL)
#: Per-workload output guards, each a constraint "<guard>:<workload>" on every trial.
GUARDS = ("truncated", "diverged")
#: A baseline re-run this much slower or faster (and outside the noise) is drift.
DRIFT_MIN = 0.03
WORST_TOK_S = 0.0
WORST_TTFT_S = 3600.0
#: Runs one configuration and returns what was measured, or raises TrialFailure.
Runner = Callable[[LoadSettings, Progress | None, Adaptive | None], TrialOutcome]
Callback = Callable[[optuna.Study, FrozenTrial], None]


def metric_names(workloads: Sequence[str]) -> list[str]:
    return [m for w in workloads for m in (f"{w}_tok_s", f"{w}_ttft_s")]


def redact(url: str) -> str:
    """The storage URL without its password, for messages and reports."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL has no password we can find; say nothing of it
        return "<storage URL>"


def open_storage(url: str, heartbeat_s: float = 30, grace_s: float = 120) -> RDBStorage:
    """Optuna's RDB storage with heartbeats: a trial whose worker died (kill -9, power cut)
    is failed after ``grace_s`` by the next worker that asks for a trial, and retried once."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True  # survive a database restart overnight
    try:
        for attempt in range(5):
            try:
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=max(1, round(heartbeat_s)),
                    grace_period=max(2, round(grace_s)),
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                )
            except sqlalchemy.exc.IntegrityError:
                # Workers starting together on an empty database race to create the tables
                if attempt == 4:
                    raise
                time.sleep(0.5 + attempt)
        raise AssertionError("unreachable")
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(
            f"cannot open storage {redact(url)}: {first.replace(url, redact(url))}; "
            "check the storage URL and that the database server is running"
        ) from None


def open_study(
    config: StudyConfig, storage_url: str | None = None, *, create: bool = False
) -> optuna.Study:
    """Open the study the file describes; create it only when ``create``."""
    url = storage_url or config.storage
    if not create and url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path and path != ":memory:" and not os.path.exists(path):
            raise StorageError(f"no study yet at {path}; run `sweeper run {config.path}` first")
    storage = open_storage(url, config.heartbeat_s, config.heartbeat_grace_s)
    names = metric_names([w.name for w in config.workloads])
    if create:
        study = optuna.create_study(
            study_name=config.name,
            storage=storage,
            load_if_exists=True,
            directions=[StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE] * len(config.workloads),
        )
        if not study.user_attrs.get("config"):
            study.set_metric_names(names)
            study.set_user_attr("config", config.describe())
            study.set_user_attr("sweeper_version", __version__)
    else:
        try:
            study = optuna.load_study(study_name=config.name, storage=storage)
        except KeyError:
            raise StorageError(
                f"no study named {config.name!r} in {redact(url)}; "
                f"run `sweeper run {config.path}` first"
            ) from None
    _check_same_study(study, config, names)
    return study


def _check_same_study(study: optuna.Study, config: StudyConfig, names: list[str]) -> None:
    stored = study.user_attrs.get("config")
    if stored is None:
        return
    current = config.describe()
    changed = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    if changed or study.metric_names != names:
        raise StorageError(
            f"study {config.name!r} was created with a different "
            f"{', '.join(changed) or 'set of workloads'} than {config.path} now has; "
            "give the study a new name (or restore the file) so that results stay comparable"
        )


def check_machine(study: optuna.Study, machine: dict[str, Any], allow_mixed: bool) -> None:
    """Refuse a worker whose hardware differs from the study's first, unless allowed:
    numbers from different machines are not comparable."""
    first = study.user_attrs.get("machine")
    if first is None:
        study.set_user_attr("machine", machine)
        return
    diff = fingerprint.differences(first, machine)
    if diff and not allow_mixed:
        raise StorageError(
            f"this machine differs from the one study {study.study_name!r} started on "
            f"({'; '.join(diff)}); its numbers would not be comparable. Use a new study name, "
            "or pass --allow-mixed-hardware to add it anyway (results are then grouped by machine)"
        )


def baseline_trial(study: optuna.Study) -> FrozenTrial | None:
    """The measured baseline (the first complete trial tagged as such)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("tag") == "baseline" and not t.user_attrs.get("failure_reason"):
            return t
    return None


class Sweep:
    """Runs a study file's sweep: baseline first, then sampled trials, resumable."""

    def __init__(
        self,
        config: StudyConfig,
        runner: Runner,
        storage_url: str | None = None,
        machine: dict[str, Any] | None = None,
    ):
        self.config = config
        self.runner = runner
        self.storage_url = storage_url
        self.machine = machine or {}
        self.progress: Progress | None = None

    def open(self) -> optuna.Study:
        return open_study(self.config, self.storage_url, create=True)

    def run(
        self,
        study: optuna.Study,
        trials: int | None = None,
        timeout_s: float | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> int:
        """Run until the study holds ``trials`` complete trials; return how many ran now."""
        target = trials or self.config.trials
        before = len(study.get_trials(deepcopy=False, states=_FINISHED))
        self._enqueue_baseline(study)
        self._enqueue_retries(study)
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if done >= target:
            return 0
        study.sampler = self._sampler(study, target)
        study.optimize(
            self.objective,
            n_trials=target - done,
            timeout=timeout_s,
            # Running trials count too: with several workers on one study, a worker does not
            # start a trial that other workers' running trials already make unnecessary.
            callbacks=[
                MaxTrialsCallback(target, states=(TrialState.COMPLETE, TrialState.RUNNING)),
                self._enqueue_drift_check,
                *callbacks,
            ],
        )
        return len(study.get_trials(deepcopy=False, states=_FINISHED)) - before

    def _sampler(self, study: optuna.Study, target: int) -> optuna.samplers.BaseSampler:
        # A resumed run must not replay the first run's random start-up proposals: the seed
        # moves on with the number of trials already stored.
        seed = self.config.sampler_seed + len(study.get_trials(deepcopy=False))
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=max(4, min(10, target // 5))
        )

    def _enqueue_baseline(self, study: optuna.Study) -> None:
        if any(t.user_attrs.get("tag") == "baseline" for t in study.get_trials(deepcopy=False)):
            return
        dims = self.config.space.dimensions
        params = {
            name: value
            for name, value in self.config.baseline.to_dict().items()
            if name in dims and dims[name].contains(value)
        }
        study.enqueue_trial(params, user_attrs={"tag": "baseline"})

    def _adaptive(self, study: optuna.Study) -> Adaptive | None:
        """Extra repeats for trials near a workload's current front (see measure.Adaptive)."""
        cfg = self.config
        if cfg.max_repeats <= cfg.repeats:
            return None
        from sweeper.results import pareto_front, points

        fronts = {
            w.name: [
                (p.tok_s["median"], p.ttft_s["median"]) for p in pareto_front(points(study, w.name))
            ]
            for w in cfg.workloads
        }
        return Adaptive(cfg.max_repeats, cfg.target_ci, fronts)

    def _enqueue_drift_check(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Re-run the baseline every so often: if it moved, the machine changed under the
        sweep (heat, background load, another app on the GPU)."""
        cfg = self.config
        if cfg.drift_check_trials is None and cfg.drift_check_s is None:
            return
        trials = study.get_trials(deepcopy=False)
        anchors = [t for t in trials if t.user_attrs.get("tag") in ("baseline", "baseline-check")]
        if not anchors or any(t.state == TrialState.WAITING for t in anchors):
            return
        last = anchors[-1]
        since = [t for t in trials if t.number > last.number and t.state.is_finished()]
        due_by_count = cfg.drift_check_trials is not None and len(since) >= cfg.drift_check_trials
        due_by_time = (
            cfg.drift_check_s is not None
            and last.datetime_complete is not None
            and (datetime.datetime.now() - last.datetime_complete).total_seconds()
            >= cfg.drift_check_s
        )
        if due_by_count or due_by_time:
            study.enqueue_trial(anchors[0].params, user_attrs={"tag": "baseline-check"})

    def _check_drift(self, trial: optuna.Trial, outcome: TrialOutcome) -> None:
        base = baseline_trial(trial.study)
        if base is None:
            return
        moved = {}
        for w, result in outcome.workloads.items():
            ref = [r["decode_tok_s"] for r in base.user_attrs[f"w:{w}"]["runs"]]
            now = [r.decode_tok_s for r in result.runs]
            diff = stats.relative_difference(ref, now)
            if diff.excludes_zero() and abs(diff.estimate) >= DRIFT_MIN:
                moved[w] = [round(v * 100, 2) for v in diff.to_list()]
        trial.set_user_attr("drift", moved)
        if not moved:
            return
        checks = [
            t.number
            for t in trial.study.get_trials(deepcopy=False)
            if t.user_attrs.get("tag") in ("baseline", "baseline-check") and t.number < trial.number
        ]
        since = max(checks) if checks else 0
        event = {"check_trial": trial.number, "since_trial": since, "tok_s_change_pct": moved}
        events = [*trial.study.user_attrs.get("drift_events", []), event]
        trial.study.set_user_attr("drift_events", events)
        log.warning(
            "drift: the baseline re-run (trial %d) moved %s; trials %d-%d may be affected",
            trial.number,
            ", ".join(f"{w} {v[0]:+.1f}% tok/s" for w, v in moved.items()),
            since + 1,
            trial.number - 1,
        )

    def _enqueue_retries(self, study: optuna.Study) -> None:
        """Trials interrupted by Ctrl-C run again, once, when the sweep resumes."""
        trials = study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        for t in trials:
            if (
                t.state == TrialState.FAIL
                and t.number not in retried
                and t.user_attrs.get("failure_reason") == "interrupted"
            ):
                attrs: dict[str, Any] = {"retry_of": t.number}
                if "tag" in t.user_attrs:
                    attrs["tag"] = t.user_attrs["tag"]
                study.enqueue_trial(t.params, user_attrs=attrs)

    def objective(self, trial: optuna.Trial) -> list[float]:
        try:
            return self._objective(trial)
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM anywhere in the trial: marked so that the next run retries it
            trial.set_user_attr("failure_reason", "interrupted")
            raise

    def _objective(self, trial: optuna.Trial) -> list[float]:
        cfg = self.config
        tag = trial.user_attrs.get("tag")
        is_baseline = tag in ("baseline", "baseline-check")
        if tag == "baseline" and _earlier_baseline(trial):
            # Two workers starting together may both enqueue the baseline: the second run
            # of it is kept as a repeat measurement, under its own tag.
            trial.set_user_attr("tag", "baseline-repeat")
        settings = cfg.space.suggest(trial, cfg.baseline if is_baseline else None)
        trial.set_user_attr("settings", settings.to_dict())
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("machine", self.machine)
        log.info("trial %d start: %s", trial.number, json.dumps(settings.to_dict()))
        start = time.perf_counter()
        why = invalid_combination(settings)
        if why:
            return self._infeasible(trial, "invalid_combination", why)
        try:
            outcome = self.runner(settings, self.progress, self._adaptive(trial.study))
        except TrialFailure as exc:
            trial.set_user_attr("wall_s", time.perf_counter() - start)
            return self._infeasible(trial, exc.reason, exc.detail)
        return self._record(trial, settings, outcome, time.perf_counter() - start)

    def _infeasible(self, trial: optuna.Trial, reason: str, detail: str) -> list[float]:
        log.info("trial %d infeasible: %s: %s", trial.number, reason, detail)
        trial.set_user_attr("failure_reason", reason)
        trial.set_user_attr("failure_detail", detail[:2000])
        trial.set_constraint("failed", 1.0)
        for w in self.config.workloads:
            for guard in GUARDS:
                trial.set_constraint(f"{guard}:{w.name}", 0.0)
        return [WORST_TOK_S, WORST_TTFT_S] * len(self.config.workloads)

    def _record(
        self, trial: optuna.Trial, settings: LoadSettings, outcome: TrialOutcome, wall_s: float
    ) -> list[float]:
        trial.set_user_attr("applied", outcome.applied)
        mismatch = {
            k: [v, outcome.applied.get(k)]
            for k, v in settings.to_dict().items()
            if k in outcome.applied and not _same(v, outcome.applied[k])
        }
        trial.set_user_attr("mismatch", mismatch)
        trial.set_user_attr("load_s", outcome.load_s)
        trial.set_user_attr("gen_s", outcome.gen_s)
        trial.set_user_attr("wall_s", wall_s)
        trial.set_user_attr("overhead_s", max(0.0, wall_s - outcome.load_s - outcome.gen_s))
        trial.set_user_attr("peak_rss_mb", outcome.peak_rss_mb)
        trial.set_user_attr("gpu_mem_mb", outcome.gpu_mem_mb)
        base = baseline_trial(trial.study)
        truncated = []
        trial.set_constraint("failed", 0.0)
        values: list[float] = []
        diverged = []
        for w in self.config.workloads:
            result = outcome.workloads[w.name]
            summary = result.summary()
            ratio = 1.0
            prefix = None
            if base is not None:
                ref = base.user_attrs[f"w:{w.name}"]["output_tokens"]["median"]
                ratio = result.output_tokens.median / ref if ref else 1.0
                prefix = divergence(base.user_attrs[f"w:{w.name}"].get("text", ""), summary["text"])
            elif trial.user_attrs.get("tag") == "baseline":
                prefix = len(summary["text"])  # the reference itself
            summary["divergence"] = prefix
            trial.set_user_attr(f"w:{w.name}", summary)
            need = self.config.min_prefix_chars
            short = need > 0 and prefix is not None and prefix < need
            gap = float(need - prefix) if short and prefix is not None else 0.0
            trial.set_constraint(f"diverged:{w.name}", gap)
            if short:
                diverged.append(
                    f"{w.name} differs from the baseline's output at character {prefix}"
                )
            violation = 0.0 if result.hit_cap else round(self.config.min_output_ratio - ratio, 4)
            trial.set_constraint(f"truncated:{w.name}", violation)
            trial.set_user_attr(f"output_ratio:{w.name}", round(ratio, 4))
            if violation > 0:
                truncated.append(f"{w.name} {ratio:.0%} of the baseline's output")
            values += [result.tok_s.median, result.ttft_s.median]
        if truncated or diverged:
            trial.set_user_attr("failure_reason", "truncated" if truncated else "diverged")
            trial.set_user_attr("failure_detail", "; ".join(truncated + diverged))
        if trial.user_attrs.get("tag") == "baseline-check":
            self._check_drift(trial, outcome)
        log.info(
            "trial %d done: %s",
            trial.number,
            json.dumps(
                {
                    "applied": outcome.applied,
                    "mismatch": mismatch,
                    "load_s": outcome.load_s,
                    "peak_rss_mb": outcome.peak_rss_mb,
                    "truncated": truncated,
                    "workloads": {w: r.summary() for w, r in outcome.workloads.items()},
                }
            ),
        )
        return values


def _earlier_baseline(trial: optuna.Trial) -> bool:
    return any(
        t.number < trial.number
        and t.user_attrs.get("tag") == "baseline"
        and t.state != TrialState.FAIL
        for t in trial.study.get_trials(deepcopy=False)
    )


def _same(requested: Any, applied: Any) -> bool:
    if isinstance(requested, float) and isinstance(applied, int | float):
        return abs(requested - applied) < 0.02
    return bool(requested == applied)
