"""The study logic above the backend, with the fake backend in this process."""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from conftest import FAKE_STUDY, WriteStudy, fake_runner, front_points, run_fake
from fake_backend import FAKE_OOM_CONTEXT, FakeBackend, default_behaviour
from sweeper import config as studyfile
from sweeper import fronts, records, studyrecord
from sweeper.cli import cli
from sweeper.config import StudyConfig
from sweeper.errors import StorageError
from sweeper.measurement import Run
from sweeper.objective import WORST_TTFT_S
from sweeper.settings import LoadSettings
from sweeper.storage import open_study
from sweeper.sweep import Sweep
from sweeper.workloads import Workload


def make_sweep(
    config: StudyConfig, backend: FakeBackend | None = None
) -> tuple[Sweep, FakeBackend]:
    backend = backend or FakeBackend("fake")
    return Sweep(config, fake_runner(config, backend)), backend


def status(study: object, workloads: list[str]) -> dict:
    return fronts.status(records.load(study), workloads, studyrecord.drift_events(study))


def reason(trial: object, workload: str | None = None) -> str | None:
    return records.read(trial).infeasible_reason(workload)


def test_baseline_first_then_resume(write_study: WriteStudy) -> None:
    config = studyfile.load(write_study())
    sweep, backend = make_sweep(config)
    study = sweep.open()
    assert sweep.run(study, trials=3) == 3
    assert backend.loads[0] == LoadSettings(context_length=4096, cpu_threads=1)
    trials = study.get_trials()
    assert trials[0].user_attrs["tag"] == "baseline"
    assert trials[0].params == {"context_length": 4096, "cpu_threads": 1}

    again, _ = make_sweep(config)
    assert again.run(again.open(), trials=5) == 2
    stored = open_study(config).get_trials()
    assert [t.number for t in stored] == [0, 1, 2, 3, 4]
    assert [t.user_attrs.get("tag") for t in stored].count("baseline") == 1
    assert all(t.state == TrialState.COMPLETE for t in stored)


def test_a_finished_study_runs_nothing(write_study: WriteStudy) -> None:
    config = studyfile.load(write_study())
    sweep, _ = make_sweep(config)
    study = sweep.open()
    sweep.run(study, trials=2)
    assert sweep.run(study, trials=2) == 0


def test_measurements_are_stored_with_spread_and_raw_runs(write_study: WriteStudy) -> None:
    config = studyfile.load(write_study())
    sweep, _ = make_sweep(config)
    study = sweep.open()
    sweep.run(study, trials=1)
    t = study.get_trials()[0]
    short = t.user_attrs["w:short"]
    assert len(short["runs"]) == 2 and short["warmup"] == []
    expected = default_behaviour(
        LoadSettings(context_length=4096, cpu_threads=1), config.workloads[0]
    )
    assert short["tok_s"]["median"] == pytest.approx(expected.decode_tok_s)
    assert t.values == pytest.approx([expected.decode_tok_s, expected.ttft_s, *t.values[2:]])
    assert study.metric_names == ["short_tok_s", "short_ttft_s", "long_tok_s", "long_ttft_s"]
    assert t.constraints == {
        "failed": 0.0,
        "truncated:short": 0.0,
        "truncated:long": 0.0,
        "diverged:short": 0.0,
        "diverged:long": 0.0,
        "no_answer:short": 0.0,
        "no_answer:long": 0.0,
    }
    assert t.user_attrs["applied"]["cpu_threads"] == 1
    assert t.user_attrs["mismatch"] == {}


def test_out_of_memory_is_an_infeasible_trial_and_the_sweep_goes_on(
    write_study: WriteStudy,
) -> None:
    path = write_study(
        **{"context_length = [2048, 4096]": f"context_length = [{FAKE_OOM_CONTEXT}]"}
    )
    config = studyfile.load(path)
    sweep, _ = make_sweep(config)
    study = sweep.open()
    assert sweep.run(study, trials=3) == 3
    trials = study.get_trials()
    assert trials[0].user_attrs.get("failure_reason") is None  # baseline: 4096, outside space
    for t in trials[1:]:
        assert t.state == TrialState.COMPLETE
        assert t.user_attrs["failure_reason"] == "oom"
        assert "cannot allocate" in t.user_attrs["failure_detail"]
        assert t.constraints["failed"] == 1.0
        assert t.values[1] == WORST_TTFT_S
    assert status(study, ["short", "long"])["infeasible"] == {"oom": 2}
    assert [p.trial for p in front_points(study, "short")] == [0]
    assert [t.number for t in study.best_trials] == [0]


def test_invalid_combinations_are_rejected_without_loading(write_study: WriteStudy) -> None:
    path = write_study(
        **{"flash_attention = [false, true]": "eval_batch_size = [64]\nphysical_batch_size = [512]"}
    )
    config = studyfile.load(path)
    sweep, backend = make_sweep(config)
    study = sweep.open()
    sweep.run(study, trials=2)
    assert len(backend.loads) == 1  # the baseline (no batch settings); trial 1 never loaded
    assert study.get_trials()[1].user_attrs["failure_reason"] == "invalid_combination"


def shorter_when_flash(settings: LoadSettings, workload: Workload) -> Run:
    run = default_behaviour(settings, workload)
    if settings.flash_attention:
        return dataclasses.replace(run, output_tokens=workload.max_tokens // 2, stop_reason="eos")
    return run


def test_a_shorter_output_than_the_baselines_is_truncated(write_study: WriteStudy) -> None:
    path = write_study(**{"flash_attention = [false, true]": "flash_attention = [true]"})
    config = studyfile.load(path)
    sweep, _ = make_sweep(config, FakeBackend("fake", shorter_when_flash))
    study = sweep.open()
    sweep.run(study, trials=2)
    t = study.get_trials()[1]
    assert t.user_attrs["failure_reason"] == "truncated"
    assert t.user_attrs["output_ratio:short"] == 0.5
    assert t.constraints["truncated:short"] == pytest.approx(0.4)
    assert reason(t, "short") == "truncated"
    assert [p.trial for p in front_points(study, "short")] == [0]


def test_a_run_that_hits_the_cap_is_never_truncated(write_study: WriteStudy) -> None:
    def longer_baseline(settings: LoadSettings, workload: Workload) -> Run:
        run = default_behaviour(settings, workload)
        cap = workload.max_tokens if settings.flash_attention else workload.max_tokens * 4
        return dataclasses.replace(run, output_tokens=cap)

    path = write_study(**{"flash_attention = [false, true]": "flash_attention = [true]"})
    config = studyfile.load(path)
    sweep, _ = make_sweep(config, FakeBackend("fake", longer_baseline))
    study = sweep.open()
    sweep.run(study, trials=2)
    assert study.get_trials()[1].user_attrs.get("failure_reason") is None


def test_interrupted_trial_is_failed_then_retried(write_study: WriteStudy) -> None:
    config = studyfile.load(write_study())
    calls = []

    def interrupt_second(settings: LoadSettings, workload: Workload) -> Run:
        calls.append(settings)
        if len(calls) == 5:  # trial 1: the baseline made 2 workloads x 2 repeats
            raise KeyboardInterrupt
        return default_behaviour(settings, workload)

    sweep, _ = make_sweep(config, FakeBackend("fake", interrupt_second))
    study = sweep.open()
    with pytest.raises(KeyboardInterrupt):
        sweep.run(study, trials=3)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs["failure_reason"] == "interrupted"

    resumed, _ = make_sweep(config)
    resumed.run(resumed.open(), trials=3)
    trials = open_study(config).get_trials()
    assert trials[2].user_attrs["retry_of"] == 1
    assert trials[2].params == trials[1].params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3


def test_a_changed_space_is_refused_under_the_same_study(write_study: WriteStudy) -> None:
    config = studyfile.load(write_study())
    sweep, _ = make_sweep(config)
    sweep.run(sweep.open(), trials=1)
    changed = studyfile.load(write_study(**{"cpu_threads = [1, 2, 4]": "cpu_threads = [1, 8]"}))
    with pytest.raises(StorageError, match="created with a different space than"):
        open_study(changed)


def test_opening_a_study_that_does_not_exist(write_study: WriteStudy) -> None:
    config = studyfile.load(write_study())
    with pytest.raises(StorageError, match=r"no study yet at .*; run `sweeper run"):
        open_study(config)


def test_pareto_front_is_per_workload(write_study: WriteStudy) -> None:
    def short_likes_threads(settings: LoadSettings, workload: Workload) -> Run:
        run = default_behaviour(settings, workload)
        threads = settings.cpu_threads or 1
        tok_s = 10.0 * threads if workload.name == "short" else 50.0 / threads
        return dataclasses.replace(run, decode_tok_s=tok_s, ttft_s=1.0)

    path = write_study(
        **{
            "context_length = [2048, 4096]": "context_length = [4096]",
            "flash_attention = [false, true]": "flash_attention = [false]",
        }
    )
    config = studyfile.load(path)
    sweep, _ = make_sweep(config, FakeBackend("fake", short_likes_threads))
    study = sweep.open()
    for threads in (2, 4):
        study.enqueue_trial(
            {"context_length": 4096, "cpu_threads": threads, "flash_attention": False}
        )
    sweep.run(study, trials=3)
    short = fronts.pareto_front(front_points(study, "short"))
    long = fronts.pareto_front(front_points(study, "long"))
    assert [p.settings["cpu_threads"] for p in short] == [4]
    assert [p.settings["cpu_threads"] for p in long] == [1]
    assert short[0].delta_tok_s_pct == 300.0
    assert long[0].baseline


def test_sampler_learns_to_avoid_out_of_memory(write_study: WriteStudy) -> None:
    """Infeasible (not FAIL) trials steer TPE away: most trials after start-up fit in memory."""
    path = write_study(
        **{
            "context_length = [2048, 4096]": (
                f"context_length = [2048, 4096, 8192, {FAKE_OOM_CONTEXT}]"
            ),
            "cpu_threads = [1, 2, 4]": "cpu_threads = {low = 1, high = 8}",
        }
    )
    config = studyfile.load(path)
    sweep, _ = make_sweep(config)
    study = sweep.open()
    sweep.run(study, trials=40)
    late = study.get_trials()[20:]
    oom = sum(t.user_attrs.get("failure_reason") == "oom" for t in late)
    assert oom <= 1, oom  # random sampling would give ~5 of 20 (seeded: this run gives 1)


def test_the_baseline_is_the_first_measured_trial_tagged_so(write_study: WriteStudy) -> None:
    """A failed or interrupted baseline is not the baseline; the next measured one is."""
    config = studyfile.load(write_study())
    calls = []

    def fail_first_load(settings: LoadSettings, workload: Workload) -> Run:
        calls.append(settings)
        if len(calls) == 1:
            raise FileNotFoundError  # not a TrialFailure: a bug, the sweep stops
        return default_behaviour(settings, workload)

    sweep, _ = make_sweep(config, FakeBackend("fake", fail_first_load))
    study = sweep.open()
    assert records.baseline(records.load(study)) is None
    with pytest.raises(FileNotFoundError):
        sweep.run(study, trials=1)
    assert records.baseline(records.load(study)) is None  # trial 0 failed
    records.enqueue(study, {"context_length": 4096, "cpu_threads": 1}, records.Tag.BASELINE)
    sweep.run(study, trials=2)
    recs = records.load(study)
    base = records.baseline(recs)
    assert base is not None and base.number == 1 and base.state == TrialState.COMPLETE
    assert [r.tag for r in recs][:2] == ["baseline", "baseline"]


def test_the_baseline_is_rerun_and_drift_is_flagged(write_study: WriteStudy) -> None:
    path = write_study(**{"warmup = 0": "warmup = 0\ndrift_check = 3"})
    config = studyfile.load(path)
    calls = []

    def slows_down(settings: LoadSettings, workload: Workload) -> Run:
        calls.append(1)
        run = default_behaviour(settings, workload)
        factor = 1.0 if len(calls) <= 5 * 4 else 0.8  # after five trials the machine is hot
        return dataclasses.replace(run, decode_tok_s=run.decode_tok_s * factor)

    sweep, _ = make_sweep(config, FakeBackend("fake", slows_down))
    study = sweep.open()
    sweep.run(study, trials=9)
    tags = [t.user_attrs.get("tag") for t in study.get_trials()]
    checks = [i for i, tag in enumerate(tags) if tag == "baseline-check"]
    assert tags[0] == "baseline" and checks  # re-run every 3 trials
    assert study.get_trials()[checks[0]].user_attrs["settings"] == {
        "context_length": 4096,
        "cpu_threads": 1,
    }
    assert study.get_trials()[checks[0]].user_attrs["drift"] == {}  # before the slow-down
    events = study.user_attrs["drift_events"]
    assert events and events[0]["tok_s_change_pct"]["short"][0] == pytest.approx(-20.0)
    assert events[0]["since_trial"] == checks[0]
    assert status(study, ["short", "long"])["drift_events"] == events
    shaky = {p.trial for p in front_points(study, "short") if p.unreliable}
    between = range(events[0]["since_trial"] + 1, events[0]["check_trial"])
    copies = {t.number for t in study.get_trials() if "duplicate_of" in t.user_attrs}
    assert shaky and shaky == set(between) - copies  # a copy is not a point of its own


def test_output_divergence_from_the_baseline_is_measured_and_guarded(
    write_study: WriteStudy,
) -> None:
    def text_by_threads(settings: LoadSettings, workload: Workload) -> Run:
        run = default_behaviour(settings, workload)
        text = "The same story" if settings.cpu_threads == 1 else "The sane story"
        return dataclasses.replace(run, text=text)

    path = write_study(
        **{
            "warmup = 0": "warmup = 0\nmin_prefix_chars = 10",
            "cpu_threads = [1, 2, 4]": "cpu_threads = [2]",
        }
    )
    config = studyfile.load(path)
    sweep, _ = make_sweep(config, FakeBackend("fake", text_by_threads))
    study = sweep.open()
    sweep.run(study, trials=2)
    base, other = study.get_trials()
    assert base.user_attrs["w:short"]["divergence"] == len("The same story")
    assert other.user_attrs["w:short"]["divergence"] == 6
    assert other.user_attrs["failure_reason"] == "diverged"
    assert other.constraints["diverged:short"] == 4.0
    assert (
        "short differs from the baseline's output at character 6"
        in other.user_attrs["failure_detail"]
    )
    assert reason(other, "short") == "diverged"


def test_adaptive_repeats_go_to_trials_near_the_front(write_study: WriteStudy) -> None:
    import itertools

    jitter = itertools.cycle([0.9, 1.1, 1.0, 0.95, 1.05])

    def noisy(settings: LoadSettings, workload: Workload) -> Run:
        run = default_behaviour(settings, workload)
        return dataclasses.replace(run, decode_tok_s=run.decode_tok_s * next(jitter))

    path = write_study(
        **{
            "repeats = 2": "repeats = 2\nmax_repeats = 6\ntarget_ci = 0.01",
            # three configurations for three trials: sampled (a smaller space is enumerated)
            "cpu_threads = [1, 2, 4]": "cpu_threads = [1, 3, 4]",
            "flash_attention = [false, true]": "flash_attention = [false]",
            "context_length = [2048, 4096]": "context_length = [4096]",
        }
    )
    config = studyfile.load(path)
    sweep, _ = make_sweep(config, FakeBackend("fake", noisy))
    study = sweep.open()
    study.enqueue_trial({"context_length": 4096, "cpu_threads": 4, "flash_attention": False})
    study.enqueue_trial({"context_length": 4096, "cpu_threads": 1, "flash_attention": False})
    sweep.run(study, trials=3)
    trials = study.get_trials()
    threads = [t.user_attrs["settings"]["cpu_threads"] for t in trials]
    runs = [len(t.user_attrs["w:short"]["runs"]) for t in trials]
    # 4 threads runs first and starts the front, noisy: repeats up to the cap; then 1 thread
    # (twice, once as the baseline) is dominated beyond the noise: the 2 screening runs only
    assert (threads, runs) == ([4, 1, 1], [6, 2, 2])


def test_a_trial_reads_the_stored_trials_once(
    write_study: WriteStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A counting storage: every read of all stored trials that sweeper asks for is counted
    per trial (before the first: the sweep's start); one trial, one snapshot, whatever it
    decides after (a baseline re-run due, the deadline)."""
    text = FAKE_STUDY.replace("[measure]\n", "[measure]\ndrift_check = 2\n", 1)
    config = studyfile.load(write_study(text))
    sweep, _ = make_sweep(config)
    study = sweep.open()
    storage = study._storage
    reads: dict[int, int] = {}
    get_all_trials, waiting = storage.get_all_trials, TrialState.WAITING

    def counting(study_id: int, deepcopy: bool = True, states: object = None) -> object:
        if states is None and asked_by_sweeper():  # all of them (not Optuna's own reads)
            begun = [t.number for t in get_all_trials(study_id, False) if t.state != waiting]
            key = max(begun, default=-1)  # the trial running, or the one just finished
            reads[key] = reads.get(key, 0) + 1
        return get_all_trials(study_id, deepcopy, states)

    monkeypatch.setattr(storage, "get_all_trials", counting)
    sweep.run(study, trials=4, timeout_s=3600)
    trials = [t.number for t in study.trials]
    assert "baseline-check" in [t.user_attrs.get("tag") for t in study.trials]  # one was due
    assert {n: reads.get(n) for n in trials} == {n: 1 for n in trials}


def asked_by_sweeper() -> bool:
    """Whether the read was sweeper's (``records.load``), not the sampler's own."""
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith(("optuna.samplers", "optuna.search_space")):
            return False
        if module.startswith("sweeper."):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def test_a_study_from_before_the_layout_change_resumes(tmp_path: Path) -> None:
    """A study file and its database written by sweeper at a8614a4 (tests/data: 4 trials, the
    baseline, a drift check, a confirmation) resume: stored tags, attributes and the study's
    identity read as they were, and the new trials join them."""
    data = Path(__file__).parent / "data"
    study_file = tmp_path / "old.toml"
    shutil.copy(data / "old-study.toml", study_file)
    with gzip.open(data / "old-study.db.gz") as packed:
        (tmp_path / "old.db").write_bytes(packed.read())
    resumed = CliRunner().invoke(
        cli, ["run", str(study_file), "--trials", "6", "--no-confirm", "--allow-mixed-hardware"]
    )
    assert resumed.exit_code == 0, resumed.stderr
    config = studyfile.load(study_file)
    recs = records.load(open_study(config))
    assert [r.tag for r in recs[:4]] == ["baseline", None, None, "baseline-check"]
    assert [r.is_baseline_run for r in recs[:4]] == [True, False, False, True]  # its drift check
    assert [r.state for r in recs].count(TrialState.COMPLETE) >= 6  # (a drift check may wait)
    assert studyrecord.confirmations(open_study(config))  # the old confirmation still reads
    status = CliRunner().invoke(cli, ["status", str(study_file), "--json"])
    assert status.exit_code == 0 and json.loads(status.stdout)["baseline_trial"] == 0


def test_the_wait_a_sweep_optimises_is_the_wait_its_front_draws(write_study: WriteStudy) -> None:
    """A reasoning model's second objective (TTFT + the baseline's reasoning at this speed) is
    defined once: each trial's stored value is its point's on the front, runs that differ
    included (the median of each run's wait, not a sum of medians)."""
    calls = iter(range(10_000))

    def reasoning(settings: LoadSettings, workload: Workload) -> Run:
        i = next(calls)
        run = default_behaviour(settings, workload)
        return dataclasses.replace(
            run,
            decode_tok_s=run.decode_tok_s * (1.0 + 0.3 * (i % 3)),
            ttft_s=run.ttft_s * (1.0 + 0.5 * (i % 2)),
            reasoning_tokens=8,
        )

    path = write_study(FAKE_STUDY.replace("repeats = 2", "repeats = 3"))
    _, study = run_fake(path, trials=3, behaviour=reasoning)
    recs = records.load(study)
    for i, w in enumerate(["short", "long"]):
        pts = fronts.points(recs, w)
        assert pts and all(p.wait_s is not None for p in pts)
        for p in pts:
            assert study.trials[p.trial].values[2 * i + 1] == pytest.approx(p.first_s.median)
