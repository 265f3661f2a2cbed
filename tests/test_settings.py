import pytest

from sweeper.errors import StudyFileError
from sweeper.settings import LoadSettings, check_value, invalid_combination


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("context_lenght", 4096, "unknown parameter 'context_lenght'"),
        ("context_length", "4096", "expected int, got str '4096'"),
        ("context_length", 0, "0 is below the minimum 1"),
        ("gpu_offload", 1.5, "1.5 is above the maximum 1"),
        ("flash_attention", 1, "expected bool, got int 1"),
        ("cpu_threads", True, "expected int, got bool True"),
        ("k_cache_type", "q3_k", "'q3_k' is not one of f32, f16"),
    ],
)
def test_bad_values_are_named(name: str, value: object, message: str) -> None:
    with pytest.raises(StudyFileError, match=r"^space") as err:
        check_value(name, value, "space")
    assert message in str(err.value)


def test_int_is_accepted_for_a_float_setting() -> None:
    check_value("gpu_offload", 1, "space")


def test_quantized_v_cache_needs_flash_attention() -> None:
    assert invalid_combination(LoadSettings(v_cache_type="q8_0")) is not None
    assert invalid_combination(LoadSettings(v_cache_type="q8_0", flash_attention=False))
    assert invalid_combination(LoadSettings(v_cache_type="q8_0", flash_attention=True)) is None
    assert invalid_combination(LoadSettings(v_cache_type="f16")) is None
    assert invalid_combination(LoadSettings(k_cache_type="q4_0")) is None


def test_physical_batch_cannot_exceed_eval_batch() -> None:
    why = invalid_combination(LoadSettings(eval_batch_size=128, physical_batch_size=512))
    assert why is not None and "physical_batch_size=512 > eval_batch_size=128" in why
    assert invalid_combination(LoadSettings(eval_batch_size=512, physical_batch_size=128)) is None


def test_to_dict_leaves_out_backend_defaults() -> None:
    assert LoadSettings(cpu_threads=2).to_dict() == {"cpu_threads": 2}
