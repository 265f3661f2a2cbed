import optuna
import pytest

from sweeper.errors import StudyFileError
from sweeper.settings import LoadSettings
from sweeper.space import SearchSpace


def test_lists_ranges_and_scalars() -> None:
    space = SearchSpace.parse(
        {
            "context_length": [1024, 4096],
            "cpu_threads": {"low": 1, "high": 8},
            "gpu_offload": {"low": 0.0, "high": 1.0, "step": 0.1},
            "mmap": True,
        }
    )
    assert set(space.dimensions) == {"context_length", "cpu_threads", "gpu_offload"}
    assert space.fixed == LoadSettings(mmap=True)
    trial = optuna.trial.FixedTrial(
        {"context_length": 4096, "cpu_threads": 3, "gpu_offload": 0.7000000000000001}
    )
    settings = space.suggest(trial)
    assert settings == LoadSettings(context_length=4096, cpu_threads=3, gpu_offload=0.7, mmap=True)


def test_v_cache_type_is_only_searched_with_flash_attention() -> None:
    space = SearchSpace.parse({"flash_attention": [False, True], "v_cache_type": ["f16", "q8_0"]})
    off = space.suggest(optuna.trial.FixedTrial({"flash_attention": False}))
    assert off.v_cache_type == "f16"
    on = space.suggest(optuna.trial.FixedTrial({"flash_attention": True, "v_cache_type": "q8_0"}))
    assert on.v_cache_type == "q8_0"


def test_baseline_values_outside_the_space_are_used_as_they_are() -> None:
    space = SearchSpace.parse({"context_length": [1024, 4096], "cpu_threads": [1, 2]})
    baseline = LoadSettings(context_length=12288, cpu_threads=2, flash_attention=True)
    trial = optuna.trial.FixedTrial({"cpu_threads": 2})  # only the in-space value is suggested
    assert space.suggest(trial, baseline) == baseline


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, "nothing to search"),
        ({"mmap": True}, "nothing to search"),
        ({"context_length": []}, "space.context_length: empty list"),
        ({"cpu_threads": [1, 1]}, "choices repeat"),
        ({"cpu_threads": {"low": 4, "high": 2}}, "low (4) must be below high (2)"),
        ({"cpu_threads": {"low": 1}}, "low and high are required"),
        ({"cpu_threads": {"low": 1, "high": 2, "stepp": 1}}, "unknown key(s) stepp"),
        ({"flash_attention": {"low": 0, "high": 1}}, "takes a list of choices, not a range"),
        ({"v_cache_type": ["q8_0", "q4_0"]}, 'add "f16" to the choices'),
        ({"threads": [1, 2]}, "unknown parameter 'threads'"),
    ],
)
def test_bad_spaces(table: dict[str, object], message: str) -> None:
    with pytest.raises(StudyFileError) as err:
        SearchSpace.parse(table)
    assert message in str(err.value)
