"""The staged sweep: every configuration screened by depth probes, the finalists measured in
full, duplicates answered from storage, small spaces enumerated, and the night's plan."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import FAKE_STUDY, WriteStudy, fake_runner, front_points
from fake_backend import FakeBackend, default_behaviour
from sweeper import config as studyfile
from sweeper import plan, records, schedule, screening, terminal
from sweeper.cli import cli
from sweeper.measurement import Probe, Run
from sweeper.records import FULL, SCREEN
from sweeper.settings import LoadSettings
from sweeper.sweep import Sweep
from sweeper.workloads import Workload

STAGED = FAKE_STUDY.replace("screening = false", "screening = true\npromote = 1")


def slower_with_depth(settings: LoadSettings, workload: Workload) -> Run:
    """Decode speed falls as the context fills, faster with flash attention when the context
    is nearly empty, slower when it is full: the curves cross (as measured on real models)."""
    run = default_behaviour(settings, workload)
    depth = run.prompt_tokens
    fa = settings.flash_attention is True
    tok_s = (
        (30.0 if fa else 27.0) * (1 - depth / (400 if fa else 900)) * (settings.cpu_threads or 1)
    )
    return dataclasses.replace(run, decode_tok_s=max(tok_s, 1.0))


def staged_sweep(path: Path, trials: int, behaviour: object = None) -> tuple[Sweep, object]:
    config = studyfile.load(path)
    backend = FakeBackend("fake", behaviour)  # type: ignore[arg-type]
    sweep = Sweep(config, fake_runner(config, backend))
    study = sweep.open()
    sweep.run(study, trials=trials)
    return sweep, study


def test_screened_trials_then_finalists_in_full(write_study: WriteStudy) -> None:
    _, study = staged_sweep(write_study(STAGED), trials=6, behaviour=slower_with_depth)
    recs = records.load(study)
    assert recs[0].is_baseline and recs[0].fidelity == FULL
    assert set(recs[0].estimates) == {"short", "long"}  # the baseline is screened too
    screened = [r for r in recs if r.fidelity == SCREEN and r.duplicate_of is None]
    assert screened and all(
        not r.workloads and set(r.estimates) == {"short", "long"} for r in screened
    )
    finals = [r for r in recs if r.tag == "full"]
    assert finals and all(r.fidelity == FULL and r.workloads for r in finals)
    for r in finals:  # a finalist is a screened configuration, measured again in full
        source = next(x for x in recs if x.number == r.promoted_from)
        assert source.fidelity == SCREEN and source.settings == r.settings
    # at most one finalist per workload (promote = 1); the best estimate of each is among them
    assert len(finals) <= 2
    for w in ("short", "long"):
        best = min(front_points(study, w) and screening_points(study, w), key=completion)
        assert best.settings in [r.settings for r in finals] + [recs[0].settings]


def test_finalists_come_from_within_the_screenings_own_noise(write_study: WriteStudy) -> None:
    """Where two screenings of the baseline lie 40% apart, configurations within 40% of the
    best estimate are finalists too: the screening cannot rank them (up to ``promote``)."""
    path = write_study(STAGED.replace("promote = 1", "promote = 5"))
    _, study = staged_sweep(path, trials=8, behaviour=slower_with_depth)
    config = studyfile.load(path)
    recs = [r for r in records.load(study) if r.tag != "full"]  # before the promotion
    quiet = schedule.finalists(config, recs)
    base = recs[0]
    assert base.is_baseline and schedule.screening_noise(recs, "short") == 0.0  # one screening
    slower = {
        w: dataclasses.replace(e, completion_s=e.completion_s * 1.4)
        for w, e in base.estimates.items()
    }
    check = dataclasses.replace(base, number=99, tag=records.Tag.DRIFT_CHECK, estimates=slower)
    assert schedule.screening_noise([*recs, check], "short") == pytest.approx(0.4)
    noisy = schedule.finalists(config, [*recs, check])
    assert len(noisy) > len(quiet)
    assert {r.number for r in quiet} <= {r.number for r in noisy}


def test_the_baselines_rerun_is_screened_too(write_study: WriteStudy) -> None:
    path = write_study(STAGED.replace("screening = true", "screening = true\ndrift_check = 3"))
    _, study = staged_sweep(path, trials=6, behaviour=slower_with_depth)
    checks = [r for r in records.load(study) if r.tag == records.Tag.DRIFT_CHECK]
    assert checks and all(r.workloads and set(r.estimates) == {"short", "long"} for r in checks)


def screening_points(study: object, workload: str) -> list:
    from sweeper import fronts

    return fronts.points(records.load(study), workload, SCREEN)  # type: ignore[arg-type]


def completion(p: object) -> float:
    from sweeper.recommend import expected_completion_s

    return expected_completion_s(p, p.output_tokens)  # type: ignore[arg-type, attr-defined]


def test_a_configuration_is_measured_once_at_a_fidelity(write_study: WriteStudy) -> None:
    """The sampler proposes the same settings again: answered from storage, nothing loaded."""
    path = write_study(
        STAGED,
        **{
            "context_length = [2048, 4096]": "context_length = [4096]",
            "flash_attention = [false, true]": "flash_attention = [false, true]",
            "cpu_threads = [1, 2, 4]": "cpu_threads = [1, 2]",
        },
    )
    config = studyfile.load(path)
    backend = FakeBackend("fake")
    sweep = Sweep(config, fake_runner(config, backend))
    study = sweep.open()
    for _ in range(3):  # the same proposal three times
        study.enqueue_trial({"context_length": 4096, "cpu_threads": 2, "flash_attention": True})
    sweep.run(study, trials=4)
    recs = records.load(study)
    assert [(r.number, r.duplicate_of) for r in recs[:3]] == [(0, None), (1, 0), (2, 0)]
    assert recs[1].values == recs[2].values == recs[0].values
    assert recs[1].fidelity == SCREEN and not recs[1].estimates  # nothing measured for it
    again = [s for s in backend.loads if s.to_dict() == recs[0].settings]
    finalist = sum(r.tag == "full" and r.settings == recs[0].settings for r in recs)
    assert len(again) == 1 + finalist  # screened once (and measured in full if promoted)


def test_a_small_space_is_enumerated(write_study: WriteStudy) -> None:
    path = write_study(
        STAGED,
        **{
            "context_length = [2048, 4096]": "context_length = [4096]",
            "cpu_threads = [1, 2, 4]": "cpu_threads = [1, 2]",
        },
    )
    _, study = staged_sweep(path, trials=10)
    recs = [r for r in records.load(study) if r.tag is None]
    sampled = {(r.settings["cpu_threads"], r.settings.get("flash_attention")) for r in recs}
    # the baseline (1 thread, no flash attention set) plus every combination, once each
    assert sampled == {(1, False), (1, True), (2, False), (2, True)}
    assert all(r.duplicate_of is None for r in recs)


def test_the_estimate_integrates_the_time_per_token_over_depth() -> None:
    # seconds per token at the middle of each probe's decoding: 0.02 at depth 110 (50 tok/s),
    # 0.04 at depth 1110 (25 tok/s): the line 0.0178 + 0.00002 d
    curve = [Probe(100, 0.5, 50.0, 20), Probe(1100, 2.0, 25.0, 20)]
    e = screening.estimate(curve[0], curve, 1000, 20)
    # decoding 1000 tokens from depth 100: the integral of the line from 100 to 1100
    exact = 0.0178 * 1000 + 0.00002 * (100 * 1000 + 1000**2 / 2)
    assert e.completion_s == pytest.approx(0.5 + exact)
    assert e.mean_tok_s == pytest.approx(1000 / exact)
    flat = screening.estimate(curve[0], [curve[0]], 1000, 20)
    assert flat.completion_s == pytest.approx(0.5 + 1000 / 50)
    # one noisy probe among five moves the estimate less than it is off itself
    line = [
        Probe(d, 0.5, 1 / (0.0178 + 0.00002 * (d + 10)), 20) for d in (100, 350, 600, 850, 1100)
    ]
    noisy = [*line[:2], Probe(600, 0.5, line[2].decode_tok_s * 0.8, 20), *line[3:]]
    clean = screening.estimate(line[0], line, 1000, 20).completion_s
    moved = screening.estimate(line[0], noisy, 1000, 20).completion_s
    assert abs(moved / clean - 1) < 0.25 / 5 + 0.01


def test_probe_prompts_are_real_text_of_the_length_asked() -> None:
    text = screening.probe_prompt("One two three.", 100, 4.0)
    assert len(text) == 400 and text.startswith("One two three. One two")
    assert screening.depth_targets(40, 540, 5) == [140, 240, 340, 440, 540]


def test_the_plan_arithmetic(write_study: WriteStudy) -> None:
    config = studyfile.load(write_study(STAGED))
    speeds = plan.Speeds(load_s=10.0, decode_tok_s=10.0, prefill_tok_s=100.0, source="assumed")
    p = plan.plan(config, speeds, timeout_s=3600)
    m = config.measure  # repeats 2, warm-up 0, probe 32 tokens; workloads of 16 and 32 tokens
    prompt = plan.PROMPT_TOKENS / 100
    assert p.full_s == pytest.approx(10 + m.repeats * ((prompt + 1.6) + (prompt + 3.2)))
    assert p.reserve_s == pytest.approx(p.finalists * p.full_s + p.confirmation_s)
    assert p.screening_trials == min(
        config.budget.trials, int((3600 - p.reserve_s) // p.screening_s)
    )
    assert p.finalists == 2  # promote 1 x 2 workloads, at most


def test_the_reserve_is_priced_at_the_finalists_screened_speeds(write_study: WriteStudy) -> None:
    """`--timeout` keeps time for the finalists and the confirmation. The finalists are the
    screening's best, not the baseline: priced at the baseline's speeds (1 thread here, 4 for
    them), the reserve kept time the screening could have had."""

    def close(settings: LoadSettings, workload: Workload) -> Run:
        """4 threads with flash attention decode faster and start later than without: both on
        the front and within 5% of each other, two finalists of different speeds."""
        fa = settings.flash_attention is True
        ttft = 0.1 + (0.02 if fa else 0.0) + (settings.context_length or 4096) / 4e6
        run = default_behaviour(settings, workload)
        tok_s = (10.0 * (settings.cpu_threads or 1) + (1.0 if fa else 0.0)) * (
            1 - run.prompt_tokens / 2000  # slower deeper: each workload's estimate its own
        )
        return dataclasses.replace(run, ttft_s=ttft, decode_tok_s=tok_s)

    two = STAGED.replace("promote = 1", "promote = 2")
    config = studyfile.load(write_study(two))
    _, study = staged_sweep(write_study(two), trials=13, behaviour=close)  # all 12 screened
    recs = [r for r in records.load(study) if r.tag != "full"]  # while screening: none in full
    base = plan.speeds(config, recs)
    ahead = schedule.finalist_speeds(config, recs)
    assert base is not None and ahead is not None
    chosen = schedule.finalists(config, recs)
    assert chosen and all(r.settings["cpu_threads"] > 1 for r in chosen)
    # the slowest of them, each over its workloads as the baseline's speeds are (the median)
    medians = [statistics.median(e.mean_tok_s for e in r.estimates.values()) for r in chosen]
    assert len(set(medians)) > 1, medians
    assert ahead.decode_tok_s == min(medians) and ahead.decode_tok_s > 1.5 * base.decode_tok_s
    at_base, at_ahead = plan.plan(config, base, recs), plan.plan(config, ahead, recs)
    c = config.confirm
    base_load, ahead_load = (
        p.confirmation_s / (c.rounds * (1 + c.candidates)) for p in (at_base, at_ahead)
    )  # one load of a confirmation round: the configuration and its workloads once
    assert schedule.reserve_s(config, recs) == pytest.approx(
        at_base.finalists * at_ahead.full_s + c.rounds * (base_load + c.candidates * ahead_load)
    )  # the confirmation's baseline runs at its own speed
    assert schedule.reserve_s(config, recs) < at_base.reserve_s
    assert schedule.reserve_s(config, recs[:1]) == at_base.reserve_s  # none named yet
    unknown = {r.number for r in chosen}  # a finalist whose load time is not known
    lacking = [dataclasses.replace(r, load_s=None) if r.number in unknown else r for r in recs]
    assert schedule.reserve_s(config, lacking) == at_base.reserve_s
    # what `sweeper plan` and `sweeper run` show is the night the sweep keeps to
    night = schedule.night(config, base, recs, timeout_s=3600)
    assert night.reserve_s == schedule.reserve_s(config, recs)
    assert night.reserve_s == pytest.approx(
        night.finalists * night.finalist_full_s + night.confirmation_s
    )
    assert "priced at the screened speeds of those it would promote now: decode" in (
        terminal.plan_text("staged", night)
    )
    assert "at their screened" in plan.summary(night)


def test_no_drift_check_is_queued_when_the_deadline_ends_screening(write_study: WriteStudy) -> None:
    """A baseline re-run queued by the trial that meets `--timeout` would run among the
    finalists, in time kept for them only (the confirmation measures the baseline beside them
    anyway). Each configuration but the baseline costs two simulated minutes a generation, so the
    deadline falls on a screened configuration, after which a re-run is due every time."""
    text = STAGED.replace("[measure]\n", "[measure]\ndrift_check = 1\n", 1).replace(
        "flash_attention = [false, true]\n",
        "flash_attention = [false, true]\neval_batch_size = [128, 256, 512, 1024]\n",
    )  # 48 configurations: sampled, not enumerated (the queued grid would run first)
    config = studyfile.load(write_study(text))
    now = [0.0]

    def slow(settings: LoadSettings, workload: Workload) -> Run:
        if settings.cpu_threads != 1:  # not the baseline
            now[0] += 120.0
        return default_behaviour(settings, workload)

    backend = FakeBackend("fake", slow)  # type: ignore[arg-type]
    sweep = Sweep(config, fake_runner(config, backend), clock=lambda: now[0])
    study = sweep.open()
    sweep.run(study, trials=20, timeout_s=1800)
    tags = [r.tag for r in records.load(study)]
    assert len(tags) < 20 and records.Tag.DRIFT_CHECK in tags  # the deadline ended it
    last_screened = max(i for i, t in enumerate(tags) if t is None)
    assert records.Tag.DRIFT_CHECK not in tags[last_screened:], tags


def test_plan_on_every_shipped_study() -> None:
    root = Path(__file__).parent.parent / "studies"
    for study in sorted(root.glob("*.toml")):
        result = CliRunner().invoke(
            cli, ["plan", str(study), "--assume-tok-s", "10", "--assume-load-s", "30", "--json"]
        )
        assert result.exit_code == 0, (study, result.stderr)
        doc = json.loads(result.stdout)
        assert {"screening_trials", "full_measurements", "confirmation_s"} <= set(doc)


def test_the_article_study_fits_a_night(tmp_path: Path) -> None:
    study = Path(__file__).parent.parent / "studies" / "rtx3060-gpt-oss-20b.toml"
    args = ["plan", str(study), "--assume-tok-s", "10", "--assume-load-s", "30", "--timeout", "8h"]
    result = CliRunner().invoke(cli, [*args, "--json", "--storage", f"sqlite:///{tmp_path}/x.db"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["screening_trials"] >= 100 and doc["full_measurements"] >= 2
    text = CliRunner().invoke(cli, [*args, "--storage", f"sqlite:///{tmp_path}/x.db"]).stdout
    assert "configurations screened, up to 2 finalists measured in full" in text


def test_plan_without_speeds_says_what_to_give(write_study: WriteStudy) -> None:
    result = CliRunner().invoke(cli, ["plan", str(write_study(STAGED))])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: the study has no measured baseline yet: give --assume")


def test_a_staged_run_says_what_it_screened_and_measured(write_study: WriteStudy) -> None:
    path = write_study(STAGED)
    result = CliRunner().invoke(cli, ["run", str(path), "--trials", "4"])
    assert result.exit_code == 0, result.stderr
    first = result.stdout.splitlines()[0]
    status = json.loads(CliRunner().invoke(cli, ["status", str(path), "--json"]).stdout)
    assert status["screened"] >= 1 and status["measured_full"] >= 2
    said = f"({status['screened']} screened, {status['measured_full']} measured in full"
    repeats = status["repeats_answered"]
    said += f", {repeats} repeated settings answered from storage)" if repeats else ")"
    assert said in first
    # after the baseline, each run starts with its plan
    again = CliRunner().invoke(cli, ["run", str(path), "--trials", "5"])
    assert again.exit_code == 0 and "plan: screening" in again.stderr
