"""A deterministic backend for testing everything above the backend (study, storage, CLI),
registered as backend "fake" for the tests only (``register``, which conftest calls).

It never stands in for a real engine in tests of the engines themselves. Its default behaviour
is a smooth function of the settings with an out-of-memory region, like a real GPU box.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sweeper.backends import (
    EXTRA_BACKENDS,
    BackendBase,
    Loaded,
    LoadProgress,
    PresetSource,
    backend_class,
)
from sweeper.errors import GenerationError, LoadError
from sweeper.measurement import Run
from sweeper.settings import PARAMS, LoadSettings
from sweeper.workloads import Sampling, Workload

Behaviour = Callable[[LoadSettings, Workload], Run]

#: A context this large "runs out of memory" in the default behaviour.
FAKE_OOM_CONTEXT = 1_000_000


def default_behaviour(settings: LoadSettings, workload: Workload) -> Run:
    ctx = settings.context_length or 4096
    if ctx >= FAKE_OOM_CONTEXT:
        raise LoadError("oom", f"fake: cannot allocate a KV cache for {ctx} tokens")
    threads = settings.cpu_threads or 1
    tok_s = 20.0 + 5.0 * threads - ctx / 4096 + (3.0 if settings.flash_attention else 0.0)
    ttft = 0.05 + 25.0 / (settings.eval_batch_size or 512) + ctx / 1e6
    n = workload.max_tokens
    return Run(
        ttft_s=ttft,
        decode_tok_s=tok_s,
        output_tokens=n,
        prompt_tokens=max(1, len(workload.prompt) // 4),  # about 4 characters a token
        stop_reason="max_tokens",
        total_s=ttft + (n - 1) / tok_s,
    )


class FakeBackend(BackendBase):
    name: ClassVar[str] = "fake"
    supported: ClassVar[frozenset[str]] = frozenset(PARAMS)
    #: stands in for LM Studio's models in the service's install tests
    names_lmstudio_models: ClassVar[bool] = True

    def __init__(self, model: str, behaviour: Behaviour | None = None) -> None:
        self.model = model
        self.behaviour = behaviour or default_behaviour
        self.settings: LoadSettings | None = None
        self.loads: list[LoadSettings] = []

    @classmethod
    def install(cls, preset: PresetSource) -> tuple[Path, Path | None]:
        return backend_class("lmstudio").install(preset)

    @classmethod
    def undo_install(cls, target: Path, backup: Path | None) -> None:
        backend_class("lmstudio").undo_install(target, backup)

    @classmethod
    def install_path(cls, model: str) -> Path | None:
        return backend_class("lmstudio").install_path(model)

    @classmethod
    def engine_version(cls, options: dict[str, Any]) -> str | None:
        """``SWEEPER_FAKE_ENGINE``: a test changes it to play an engine update."""
        return os.environ.get("SWEEPER_FAKE_ENGINE")

    def load(self, settings: LoadSettings, on_progress: LoadProgress | None = None) -> Loaded:
        # Model names that misbehave like real engines do, for the worker's own tests.
        if self.model == "fake:segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif self.model == "fake:sigkill":
            os.kill(os.getpid(), 9)  # SIGKILL (TerminateProcess on Windows)
        elif self.model == "fake:hang":
            time.sleep(3600)
        elif self.model == "fake:slow":
            time.sleep(0.5)
        elif self.model == "fake:bug":
            raise ZeroDivisionError("a bug in a backend")
        self.loads.append(settings)
        self.settings = settings
        return Loaded(settings.to_dict(), extras={"model": self.model})

    def generate(self, workload: Workload, sampling: Sampling, reuse_prefix: bool = False) -> Run:
        if self.settings is None:
            raise GenerationError("generation_failed", "fake: no model loaded")
        return self.behaviour(self.settings, workload)

    def unload(self) -> dict[str, Any]:
        self.settings = None
        return {}


def register() -> None:
    """Register this backend as "fake" here and in every process started from here (spawned
    workers, ``python -m sweeper`` children, the CLI run as a program): through the environment,
    with this folder on their PYTHONPATH (after what is there, so the checkout's sweeper wins)."""
    os.environ[EXTRA_BACKENDS] = f"fake={__name__}:FakeBackend"
    here = str(Path(__file__).resolve().parent)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([*paths, here])


if TYPE_CHECKING:
    from sweeper.backends import Backend

    _: Backend = FakeBackend("fake")
