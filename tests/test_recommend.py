from __future__ import annotations

import dataclasses

from conftest import WriteStudy, run_fake
from sweeper.backends.fake import default_behaviour
from sweeper.measure import Run
from sweeper.recommend import Rule, recommend
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


def study_with(write_study: WriteStudy, table: dict[int, tuple[float, float]]):
    _, study = run_fake(write_study(**ONE_PARAM), trials=1, behaviour=by_threads(table))
    for threads in table:
        if threads != 1:
            study.enqueue_trial(
                {"context_length": 4096, "cpu_threads": threads, "flash_attention": False}
            )
    config, study = run_fake(
        write_study(**ONE_PARAM), trials=len(table), behaviour=by_threads(table)
    )
    return config, study


def test_lowest_expected_completion_time_wins(write_study: WriteStudy) -> None:
    # 16 tokens: threads 2 -> 1.0 + 16/40 = 1.4 s; threads 4 -> 0.1 + 16/20 = 0.9 s
    _, study = study_with(write_study, {1: (10.0, 2.0), 2: (40.0, 1.0), 4: (20.0, 0.1)})
    rec = recommend(study, "short", 16)
    assert rec is not None
    assert rec.point.settings["cpu_threads"] == 4
    assert rec.reference_tokens == 16
    assert rec.expected_s == 0.1 + 16 / 20
    assert rec.gain_tok_s_pct == (100.0, 100.0, 100.0)  # 10 -> 20 tok/s, no spread in the fake


def test_limits_exclude_candidates(write_study: WriteStudy) -> None:
    _, study = study_with(write_study, {1: (10.0, 2.0), 2: (40.0, 1.0), 4: (20.0, 0.1)})
    rec = recommend(study, "short", 16, Rule(tok_s_min=30.0))
    assert rec is not None and rec.point.settings["cpu_threads"] == 2
    assert recommend(study, "short", 16, Rule(ttft_max=0.05)) is None


def test_weighted_rule(write_study: WriteStudy) -> None:
    _, study = study_with(write_study, {1: (10.0, 2.0), 2: (40.0, 1.0), 4: (20.0, 0.1)})
    rec = recommend(study, "short", 16, Rule(kind="weighted", tok_s_weight=1.0, ttft_weight=0.0))
    assert rec is not None and rec.point.settings["cpu_threads"] == 2


def test_a_tie_goes_to_the_baseline_like_config(write_study: WriteStudy) -> None:
    _, study = study_with(write_study, {1: (20.0, 0.5), 2: (20.0, 0.5)})
    rec = recommend(study, "short", 16)
    assert rec is not None and rec.point.baseline
