"""llama-server killed at each place sweeper calls it (its /props after the load, its
/apply-template before a generation, its /completion): each a trial failure with a named reason
and the server's last words, never an internal error. The real llama-server behind the tests'
own proxy (tests/llama_proxy.py, given as the server binary)."""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_proxy import wrapper_script
from moe_model import write_moe_gguf

from sweeper.backends.llamaserver import LlamaServerBackend, find_binary
from sweeper.errors import GenerationError, LoadError, TrialFailure
from sweeper.settings import LoadSettings
from sweeper.workloads import Sampling, builtin

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with a chat template: its prompts go through /apply-template."""
    return write_moe_gguf(tmp_path_factory.mktemp("model") / "moe.gguf")


@pytest.mark.parametrize(
    ("kill_at", "failure"),
    [("/props", LoadError), ("/apply-template", GenerationError), ("/completion", GenerationError)],
)
def test_a_server_killed_at_each_call_is_a_named_failure(
    model: Path, tmp_path: Path, kill_at: str, failure: type[TrialFailure]
) -> None:
    binary = wrapper_script(tmp_path, kill_at, find_binary())
    with (
        LlamaServerBackend(str(model), str(binary), 4) as backend,
        pytest.raises(TrialFailure) as err,
    ):
        backend.load(LoadSettings(context_length=256, cpu_threads=1))
        backend.generate(builtin("short", 4), Sampling())
    assert type(err.value) is failure
    assert err.value.reason == "crashed"
    assert err.value.detail.startswith(f"llama-server exited (1) during {kill_at}: ")
