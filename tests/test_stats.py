"""The statistics on synthetic samples with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from sweeper.stats import Interval, bootstrap_ci, paired_difference, relative_difference, verdict


def test_median_interval_covers_the_true_median_about_95_percent() -> None:
    rng = np.random.default_rng(1)
    hits = 0
    sims = 300
    for i in range(sims):
        x = rng.normal(50.0, 2.0, size=25)
        ci = bootstrap_ci(x, n_boot=500, seed=i)
        hits += ci.low <= 50.0 <= ci.high
    assert 0.89 <= hits / sims <= 0.99  # percentile bootstrap of a median: close to nominal


def test_relative_difference_finds_a_known_shift() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(40.0, 0.8, size=20)
    b = rng.normal(44.0, 0.8, size=20)  # +10%
    d = relative_difference(a, b)
    assert d.low <= 0.10 <= d.high and d.low > 0.05
    assert verdict(d, higher_is_better=True) == "faster"
    assert verdict(d, higher_is_better=False) == "slower"


def test_paired_rounds_cancel_a_drift_that_unpaired_samples_do_not() -> None:
    drift = np.linspace(50.0, 40.0, 10)  # the machine slows down over the run
    a = drift * 1.00
    b = drift * 1.02  # B is 2% faster in every round
    paired = paired_difference(a, b)
    assert paired.estimate == pytest.approx(0.02)
    assert paired.excludes_zero()
    assert not relative_difference(a, b).excludes_zero()  # the drift swamps it unpaired


def test_identical_configs_give_no_verdict_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(3)
    false = 0
    sims = 300
    for _ in range(sims):
        a = rng.normal(40.0, 1.0, size=8)
        b = rng.normal(40.0, 1.0, size=8)
        false += verdict(paired_difference(a, b), True) != "no detectable difference"
    assert 0.02 <= false / sims <= 0.09  # 5% nominal


def test_a_higher_level_makes_chance_verdicts_rare() -> None:
    """500 A/A comparisons (benchmarks/stats_calibration.py runs 20,000). The bounds are those
    of 2,000 draws recomputed for 500: 5% nominal +- 3.1 sd (sd 0.97% at 500), and at 99.9%
    (0.5 expected) at most 4, no likelier by chance (0.02%) than 8 of 2,000."""
    rng = np.random.default_rng(4)
    false = {0.95: 0, 0.999: 0}
    sims = 500
    for _ in range(sims):
        a = rng.normal(40.0, 0.5, size=4)
        b = rng.normal(40.0, 0.5, size=4)
        for level in false:
            diff = paired_difference(a, b, level)
            false[level] += verdict(diff, True) != "no detectable difference"
    assert 0.020 <= false[0.95] / sims <= 0.080
    assert false[0.999] <= 4


def test_min_effect_is_a_floor() -> None:
    assert verdict(Interval(0.005, 0.001, 0.009), True) == "faster"
    assert (
        verdict(Interval(0.005, 0.001, 0.009), True, min_effect=0.01) == "no detectable difference"
    )
    assert verdict(Interval(0.2, -0.01, 0.4), True) == "no detectable difference"


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0])
