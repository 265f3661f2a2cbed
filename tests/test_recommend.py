from __future__ import annotations

import dataclasses

from conftest import WriteStudy, front_points, run_fake
from fake_backend import default_behaviour
from sweeper.config import Rule
from sweeper.measurement import Run
from sweeper.recommend import recommend
from sweeper.settings import LoadSettings
from sweeper.workloads import Workload

ONE_PARAM = {
    "context_length = [2048, 4096]": "context_length = [4096]",
    "flash_attention = [false, true]": "flash_attention = [false]",
}


def by_threads(table: dict[int, tuple[float, float]]):
    def behaviour(settings: LoadSettings, workload: Workload) -> Run:
        tok_s, ttft = table[settings.cpu_threads or 1]
        return dataclasses.replace(
            default_behaviour(settings, workload), decode_tok_s=tok_s, ttft_s=ttft
        )

    return behaviour


def study_with(write_study: WriteStudy, table: dict[int, tuple[float, float]], **space: str):
    """A study whose trials are the baseline (1 thread) then each other thread count."""
    replace = space or ONE_PARAM
    _, study = run_fake(write_study(**replace), trials=1, behaviour=by_threads(table))
    for threads in table:
        if threads != 1:
            study.enqueue_trial(
                {"context_length": 4096, "cpu_threads": threads, "flash_attention": False}
            )
    return run_fake(write_study(**replace), trials=len(table), behaviour=by_threads(table))


def test_lowest_expected_completion_time_wins(write_study: WriteStudy) -> None:
    # 16 tokens: threads 2 -> 1.0 + 16/40 = 1.4 s; threads 4 -> 0.1 + 16/20 = 0.9 s
    _, study = study_with(write_study, {1: (10.0, 2.0), 2: (40.0, 1.0), 4: (20.0, 0.1)})
    rec = recommend("short", front_points(study, "short"), 16)
    assert rec is not None
    assert rec.point.settings["cpu_threads"] == 4
    assert rec.reference_tokens == 16
    assert rec.expected_s == 0.1 + 16 / 20
    # measured at different times: no gain is claimed until a confirmation
    assert (rec.status, rec.gain_tok_s_pct) == ("unconfirmed", None)
    assert rec.claim() == "unconfirmed (measured at different times)"
    assert rec.point.delta_tok_s_pct == 100.0  # 10 -> 20 tok/s, shown as a delta only


def test_limits_exclude_candidates(write_study: WriteStudy) -> None:
    _, study = study_with(write_study, {1: (10.0, 2.0), 2: (40.0, 1.0), 4: (20.0, 0.1)})
    pts = front_points(study, "short")
    rec = recommend("short", pts, 16, Rule(tok_s_min=30.0))
    assert rec is not None and rec.point.settings["cpu_threads"] == 2
    assert recommend("short", pts, 16, Rule(ttft_max=0.05)) is None


def test_weighted_rule(write_study: WriteStudy) -> None:
    _, study = study_with(write_study, {1: (10.0, 2.0), 2: (40.0, 1.0), 4: (20.0, 0.1)})
    rule = Rule(kind="weighted", tok_s_weight=1.0, ttft_weight=0.0)
    rec = recommend("short", front_points(study, "short"), 16, rule)
    assert rec is not None and rec.point.settings["cpu_threads"] == 2


def test_a_tie_goes_to_the_config_closest_to_the_baseline(write_study: WriteStudy) -> None:
    """Two candidates equally fast, both well ahead of the baseline: the one that changes fewer
    settings wins, even though the other ran first (and comes first on the front)."""

    def fast_with_two_threads(settings: LoadSettings, workload: Workload) -> Run:
        tok_s = 20.0 if settings.cpu_threads == 2 else 10.0
        return dataclasses.replace(
            default_behaviour(settings, workload), decode_tok_s=tok_s, ttft_s=0.5
        )

    path = write_study()
    _, study = run_fake(path, trials=1, behaviour=fast_with_two_threads)
    far = {"context_length": 2048, "cpu_threads": 2, "flash_attention": True}  # 3 changes
    near = {"context_length": 4096, "cpu_threads": 2, "flash_attention": False}  # 2 changes
    study.enqueue_trial(far)
    study.enqueue_trial(near)
    _, study = run_fake(path, trials=3, behaviour=fast_with_two_threads)
    pts = front_points(study, "short")
    assert [p.settings for p in pts if p.trial != 0] == [far, near]
    rec = recommend("short", pts, 16)
    assert rec is not None and rec.point.settings == near
