"""The contract every backend keeps, run against each one (optuna's pytest_storages shape):
the fake, llama.cpp on the real model (in-process and as llama-server), and LM Studio's protocol
over a real socket.
A backend added later joins ``BACKENDS`` below and must pass the same tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conftest import open_backend
from sweeper.backends import Backend, BackendBase, backend_class
from sweeper.errors import GenerationError
from sweeper.settings import PARAMS, LoadSettings
from sweeper.workloads import Sampling, builtin

BACKENDS = ["fake", "llama.cpp", "llama-server", "lmstudio"]
#: every backend but the fake drives the real model (the `real` marker, per parameter)
BACKEND_PARAMS = [b if b == "fake" else pytest.param(b, marks=pytest.mark.real) for b in BACKENDS]
SHORT = builtin("short", 6)


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest, model_path: str) -> Iterator[Backend]:
    with open_backend(request.param, model_path) as b:
        yield b


def test_it_is_registered_with_what_it_can_apply(backend: Backend) -> None:
    cls = type(backend)
    assert isinstance(backend, Backend) and issubclass(cls, BackendBase)
    assert backend_class(cls.name) is cls
    assert backend.supported <= set(PARAMS)
    assert {"context_length", "cpu_threads"} <= backend.supported
    for name in set(PARAMS) - backend.supported:
        assert cls.unsupported_why[name]  # every refusal says why


def test_load_reports_what_was_applied_and_generation_is_measured(backend: Backend) -> None:
    progress: list[float] = []
    applied = backend.load(LoadSettings(context_length=512, cpu_threads=2), progress.append)
    assert applied.settings["context_length"] == 512 and applied.settings["cpu_threads"] == 2
    assert all(0 <= f <= 1 for f in progress)
    run = backend.generate(SHORT, Sampling())
    assert 1 <= run.output_tokens <= SHORT.max_tokens
    assert run.stop_reason in ("eos", "max_tokens")
    assert run.prompt_tokens > 0 and run.ttft_s > 0 and run.total_s >= run.ttft_s
    assert run.decode_tok_s > 0 or run.output_tokens == 1


def test_a_reload_applies_the_new_settings(backend: Backend) -> None:
    backend.load(LoadSettings(context_length=512, cpu_threads=2))
    applied = backend.load(LoadSettings(context_length=1024, cpu_threads=1))
    assert (applied.settings["context_length"], applied.settings["cpu_threads"]) == (1024, 1)
    assert backend.generate(SHORT, Sampling()).output_tokens >= 1


def test_greedy_generation_repeats_itself(backend: Backend) -> None:
    backend.load(LoadSettings(context_length=512))
    first, second = (backend.generate(SHORT, Sampling()) for _ in range(2))
    assert (first.output_tokens, first.text) == (second.output_tokens, second.text)


def test_nothing_is_generated_without_a_loaded_model(backend: Backend) -> None:
    with pytest.raises(GenerationError) as err:
        backend.generate(SHORT, Sampling())
    assert err.value.reason == "generation_failed"
    backend.load(LoadSettings(context_length=512))
    backend.unload()
    with pytest.raises(GenerationError):
        backend.generate(SHORT, Sampling())
