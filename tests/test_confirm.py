"""Confirmation: a recommendation is re-measured side by side with the baseline before any
gain is claimed. The logic with the fake backend in this process; the real model in a few
end-to-end tests (marked real)."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

from click.testing import CliRunner

from conftest import FAKE_STUDY, WriteStudy, fake_runner, run_fake
from fake_backend import FakeBackend, default_behaviour
from sweeper import config as studyfile
from sweeper import confirm
from sweeper.cli import cli
from sweeper.measurement import Run, TrialOutcome, WorkloadResult
from sweeper.recommend import for_study
from sweeper.settings import LoadSettings
from sweeper.storage import open_study
from sweeper.workloads import Workload

ONE_ROUND = {"repeats = 2": "repeats = 1"}


def round_runner(config: studyfile.StudyConfig, behaviour: object) -> object:
    runner = fake_runner(config, FakeBackend("fake", behaviour))  # type: ignore[arg-type]
    runner.spec = dataclasses.replace(runner.spec, repeats=1)
    return runner


def confirmed(path: Path, behaviour: object, again: bool = False) -> dict:
    config = studyfile.load(path)
    study = open_study(config)
    confirm.confirm_study(study, config, round_runner(config, behaviour), again=again)  # type: ignore[arg-type]
    return {w: v.recommendation for w, v in for_study(study, config).items()}


def threads_matter(settings: LoadSettings, workload: Workload) -> Run:
    return default_behaviour(settings, workload)  # 5 tok/s more per thread, exactly


def test_a_clear_gain_is_confirmed_early_with_its_sign(write_study: WriteStudy) -> None:
    path = write_study()
    run_fake(path, trials=4)
    recs = confirmed(path, threads_matter)
    for rec in recs.values():
        assert rec.status == "confirmed" and rec.confirmation is not None
        assert rec.confirmation.rounds == 3  # no noise: clear at the first look
        assert rec.gain_tok_s_pct is not None and rec.gain_tok_s_pct.low > 0
        assert rec.point.settings["cpu_threads"] > 1
        assert "confirmed side by side in 3 interleaved rounds" in rec.claim()


def test_a_confirmation_keeps_the_gpu_layers_of_each_candidate(write_study: WriteStudy) -> None:
    """What the engine put on the GPU in the candidate's loads is stored with it (the studies
    page compares it with what an installed preset was measured with)."""
    path = write_study()
    run_fake(path, trials=4)

    def says_layers(settings: LoadSettings, workload: Workload) -> Run:
        run = threads_matter(settings, workload)
        return dataclasses.replace(run, backend_stats={"num_gpu_layers": settings.cpu_threads})

    recs = confirmed(path, says_layers)
    for rec in recs.values():
        assert rec.confirmation is not None
        (cand,) = [c for c in rec.confirmation.candidates if c.trial == rec.point.trial]
        assert cand.gpu_layers == rec.point.settings["cpu_threads"]


def test_an_apparent_gain_that_was_the_machine_is_not_claimed(write_study: WriteStudy) -> None:
    """The baseline trial ran on a busy machine (half speed): every later trial looks faster.
    Side by side, nothing is: keep your settings, and nothing to export."""
    path = write_study(**{"cpu_threads = [1, 2, 4]": "cpu_threads = [1]"})
    busy = [True]

    def busy_at_first(settings: LoadSettings, workload: Workload) -> Run:
        run = default_behaviour(settings, workload)
        return dataclasses.replace(run, decode_tok_s=run.decode_tok_s / (2 if busy[0] else 1))

    run_fake(path, trials=1, behaviour=busy_at_first)
    busy[0] = False
    _, study = run_fake(path, trials=4, behaviour=busy_at_first)
    before = for_study(study, studyfile.load(path))["short"].recommendation
    assert before is not None and before.status == "unconfirmed"
    assert before.point.delta_tok_s_pct and before.point.delta_tok_s_pct > 50

    rng = random.Random(3)

    def same_speed_noisy(settings: LoadSettings, workload: Workload) -> Run:
        same = settings.replace(flash_attention=False, context_length=4096)
        run = default_behaviour(same, workload)
        return dataclasses.replace(run, decode_tok_s=run.decode_tok_s * rng.gauss(1, 0.01))

    recs = confirmed(path, same_speed_noisy)
    for rec in recs.values():
        assert rec.status == "keep" and rec.point.baseline
        assert rec.claim().startswith("keep your settings: no candidate beat them by more than")
        assert rec.gain_tok_s_pct is None
    result = CliRunner().invoke(cli, ["export", str(path), "-w", "short", "--format", "lms"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: short: keep your settings: no candidate beat them")
    assert result.stderr.rstrip().endswith("; nothing to export")


def test_a_candidate_that_only_writes_less_is_not_faster(write_study: WriteStudy) -> None:
    path = write_study()
    run_fake(path, trials=4)

    def shorter_when_faster(settings: LoadSettings, workload: Workload) -> Run:
        run = default_behaviour(settings, workload)
        if (settings.cpu_threads or 1) > 1:  # stops early: "eos" well before the cap
            run = dataclasses.replace(
                run, output_tokens=workload.max_tokens // 2, stop_reason="eos"
            )
        return run

    recs = confirmed(path, shorter_when_faster)
    rec = recs["short"]
    assert rec.status == "keep"
    assert rec.confirmation is not None
    verdicts = {c.verdict for c in rec.confirmation.candidates}
    assert verdicts == {"shorter output"}
    assert rec.note and "only faster by writing less" in rec.note
    assert rec.confirmation.candidates[0].stop_reasons == ["eos"]


def test_a_study_that_can_only_propose_the_baseline_keeps_it(write_study: WriteStudy) -> None:
    """A/A at the sweep level: every trial is the baseline's configuration."""
    path = write_study(
        **{
            "context_length = [2048, 4096]": "context_length = [4096]",
            "cpu_threads = [1, 2, 4]": "cpu_threads = [1]",
            "flash_attention = [false, true]": "flash_attention = [false]",
            "cpu_threads = 1\n": "cpu_threads = 1\nflash_attention = false\n",
        }
    )
    result = CliRunner().invoke(cli, ["run", str(path), "--trials", "3"])
    assert result.exit_code == 0, result.stderr
    assert "  short: trial 0 (the baseline), expected" in result.stdout
    assert "keep your settings: no candidate beat them" in result.stdout
    assert "confirm round" not in result.stderr  # nothing to confirm
    doc = json.loads(CliRunner().invoke(cli, ["pareto", str(path), "--json"]).stdout)
    assert doc["short"]["recommended"]["status"] == "keep"
    assert doc["short"]["recommended"]["confirmed"] is False


def test_a_confirmation_applies_only_to_what_it_measured(write_study: WriteStudy) -> None:
    """Once the sweep finds a new best, the old confirmation says nothing about it."""
    path = write_study(**{"cpu_threads = [1, 2, 4]": "cpu_threads = [1, 2]"})
    config = studyfile.load(path)
    _, study = run_fake(path, trials=1)
    study.enqueue_trial({"context_length": 4096, "cpu_threads": 2, "flash_attention": False})
    run_fake(path, trials=2)
    confirmed(path, threads_matter)
    assert for_study(study, config)["short"].recommendation.status == "confirmed"  # type: ignore[union-attr]
    study.enqueue_trial({"context_length": 2048, "cpu_threads": 2, "flash_attention": True})
    run_fake(path, trials=3)
    rec = for_study(study, config)["short"].recommendation
    assert rec is not None and rec.point.settings["flash_attention"] is True
    assert rec.status == "unconfirmed" and rec.gain_tok_s_pct is None
    assert confirm.pending(study, config)


def test_runner_ups_within_noise_are_confirmed_too(write_study: WriteStudy) -> None:
    """Two candidates the sweep's repeats cannot tell apart both get measured; the faster one
    side by side wins, even if it was not the one recommended first."""
    path = write_study(**{"cpu_threads = [1, 2, 4]": "cpu_threads = [1, 2, 4]"})
    rng = random.Random(0)

    def noisy(settings: LoadSettings, workload: Workload) -> Run:
        run = default_behaviour(settings.replace(context_length=4096), workload)
        threads = settings.cpu_threads or 1
        tok_s = {1: 20.0, 2: 30.0, 4: 30.5}[threads] * rng.gauss(1, 0.05)
        return dataclasses.replace(run, decode_tok_s=tok_s, ttft_s=0.1)

    _, study = run_fake(path, trials=1, behaviour=noisy)
    for t in (2, 4):
        study.enqueue_trial({"context_length": 4096, "cpu_threads": t, "flash_attention": False})
    run_fake(path, trials=3, behaviour=noisy)
    config = studyfile.load(path)
    the_plan = confirm.plan(for_study(study, config), config.confirm.candidates)
    assert the_plan is not None
    assert sorted(p.settings["cpu_threads"] for p in the_plan.candidates["short"]) == [2, 4]
    assert the_plan.configs()[0].label == "baseline"
    assert len(the_plan.configs()) == 3  # the workloads share the rounds


def outcome(tok_s: float, tokens: int = 10) -> TrialOutcome:
    run = Run(1.0 / tok_s, tok_s, tokens, 5, "max_tokens", 1.0)
    return TrialOutcome({}, 0.1, {"short": WorkloadResult("short", tokens, (run,))}, 1.0)


def test_the_confirmation_rule_keeps_its_error_rate(write_study: WriteStudy) -> None:
    """A/A confirmations on seeded noise (3% per round). The 95% interval is two-sided, so a
    false "faster" may happen in 2.5% of them; the early looks must not add to that (checking
    at 95% every round from the third would: 4.7% here). benchmarks/confirm.py measures more."""
    text = FAKE_STUDY.split("[[workloads]]")[0] + '[[workloads]]\nname = "short"\nmax_tokens = 10\n'
    config = studyfile.load(write_study(text))
    rng = random.Random(7)
    base = {"context_length": 4096, "cpu_threads": 1}
    cand = confirm.Plan(base, {"short": [_point(base | {"cpu_threads": 2})]}, {"short": 10.0})

    def runner(settings: LoadSettings) -> TrialOutcome:
        return outcome(30.0 * rng.gauss(1, 0.03))

    trials = 1000
    results = [confirm.run(config, cand, runner)[0] for _ in range(trials)]
    false_faster = sum(r.chosen is not None for r in results) / trials
    false_slower = sum(r.candidates[0].verdict == "slower" for r in results) / trials
    # 2.5% nominal, 4.7% for the rule that looks at 95% every round; at 1,000 draws (sd 0.49%
    # and 0.67%) 3.4% lies 1.9 sd from both: a correct rule passes, that one fails, 97 times
    # in 100. benchmarks/confirm.py runs 4,000 per noise level.
    assert false_faster <= 0.034 and false_slower <= 0.034, (false_faster, false_slower)


def _point(settings: dict) -> object:
    from sweeper.fronts import Point
    from sweeper.measurement import Spread

    s = Spread(1, 1, 1, 1, 1, 1)
    return Point(
        trial=1,
        settings=settings,
        tok_s=s,
        ttft_s=s,
        output_tokens=10,
        stop_reasons=[],
        baseline=False,
    )
