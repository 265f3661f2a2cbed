"""The llama.cpp backend on the real Gemma 3 270M model (real generation, tiny token caps)."""

from __future__ import annotations

import pytest

from sweeper.backends.llamacpp import LlamaCppBackend
from sweeper.errors import GenerationError, TrialFailure
from sweeper.runner import WorkerSpec, run_in_child
from sweeper.settings import LoadSettings
from sweeper.workloads import Sampling, builtin

pytestmark = pytest.mark.real
SHORT = builtin("short", 12)


@pytest.fixture(scope="module")
def backend(model_path: str) -> LlamaCppBackend:
    with LlamaCppBackend(model_path) as b:
        yield b


def test_generates_and_counts_tokens_like_llama_cpp(backend: LlamaCppBackend) -> None:
    applied = backend.load(LoadSettings(context_length=1024, cpu_threads=2))
    runs = [backend.generate(SHORT, Sampling()) for _ in range(2)]
    for run in runs:
        assert run.output_tokens == SHORT.max_tokens
        assert run.stop_reason == "max_tokens"
        assert run.output_tokens == run.backend_stats["engine_output_tokens"]
        # the whole prompt is processed every run: no prefix cache hides prompt time
        assert run.prompt_tokens == run.backend_stats["n_p_eval"]
        assert run.ttft_s > 0 and run.decode_tok_s > 0
    assert applied.settings["context_length"] == 1024
    assert applied.settings["cpu_threads"] == 2
    assert applied.extras["llama.cpp"]["prompt_format"] == "gemma"
    # greedy, seeded sampling: the same settings give the same output length and tokens
    assert runs[0].output_tokens == runs[1].output_tokens


def test_turn_format_keeps_gemma_talking(backend: LlamaCppBackend) -> None:
    """Without a chat template in the GGUF, Gemma needs its turn format or it stops at once."""
    backend.load(LoadSettings(context_length=1024))
    prompt = backend.format_prompt(SHORT)
    assert prompt.startswith("<start_of_turn>user\nAIでできること")
    assert prompt.endswith("<end_of_turn>\n<start_of_turn>model\n")
    assert backend.generate(SHORT, Sampling()).output_tokens == SHORT.max_tokens


def test_applied_config_reports_what_llama_cpp_set_up(backend: LlamaCppBackend) -> None:
    settings = LoadSettings(
        context_length=2048,
        eval_batch_size=256,
        physical_batch_size=128,
        cpu_threads=1,
        flash_attention=True,
        k_cache_type="q8_0",
        v_cache_type="q8_0",
        mmap=False,
        gpu_offload=1.0,
    )
    applied = backend.load(settings)
    for name, value in settings.to_dict().items():
        if name != "gpu_offload":
            assert applied.settings[name] == value, name
    # a CPU build cannot offload: the applied ratio says so instead of echoing the request
    assert applied.settings["gpu_offload"] == (
        1.0 if applied.extras["llama.cpp"]["gpu_build"] else 0.0
    )
    assert backend.generate(SHORT, Sampling()).output_tokens == SHORT.max_tokens


def test_a_context_too_small_for_the_workload(backend: LlamaCppBackend) -> None:
    backend.load(LoadSettings(context_length=32))
    with pytest.raises(GenerationError) as err:
        backend.generate(builtin("short", 64), Sampling())
    assert err.value.reason == "context_too_small"
    assert "prompt + 64 output tokens > context_length 32" in err.value.detail


def test_a_load_that_cannot_allocate_is_oom(model_path: str) -> None:
    spec = WorkerSpec("llama.cpp", model_path, (SHORT,), Sampling(), 1, 0, memory_limit_mb=2048)
    with pytest.raises(TrialFailure) as err:
        run_in_child(spec, LoadSettings(context_length=8_000_000), 120)
    assert err.value.reason == "oom"
    assert "failed to allocate buffer for kv cache" in err.value.detail


def test_a_trial_in_a_worker(model_path: str) -> None:
    spec = WorkerSpec("llama.cpp", model_path, (SHORT,), Sampling(), 2, 1)
    outcome = run_in_child(spec, LoadSettings(context_length=512, cpu_threads=1), 120)
    assert outcome.applied.settings["cpu_threads"] == 1
    result = outcome.workloads["short"]
    assert len(result.runs) == 2 and len(result.warmup) == 1
    assert result.output_tokens.median == 12
    assert outcome.load_s > 0 and outcome.gen_s > 0
    assert outcome.peak_rss_mb is not None and outcome.peak_rss_mb > 100  # the model is in RAM
