"""Backends: the small interface every inference engine is driven through, and the registry.

A backend loads a model with canonical settings and generates from it, in sweeper's own types
(``LoadSettings`` in; the applied configuration and ``Run`` out). Every failure leaves it as a
``LoadError``/``GenerationError`` with a named reason, mapped in one place per backend; SDK
exceptions never leave a backend.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

from sweeper import distribution
from sweeper.errors import BackendUnavailable, StudyFileError
from sweeper.measurement import Run
from sweeper.settings import LMSTUDIO_ONLY, LoadSettings
from sweeper.workloads import Sampling, Workload

#: Called with a load's progress, 0..1, by backends that report it.
LoadProgress = Callable[[float], None]


@runtime_checkable
class Backend(Protocol):
    """What the runner drives. ``load`` returns the *applied* configuration as the engine
    reports it (canonical names where there is one, engine extras under the engine's name).
    ``generate`` processes the whole prompt (an honest time to first token) unless
    ``reuse_prefix``: then an engine that can keep what it already holds of the prompt does
    (depth probes, whose prompts extend each other, need not process it again)."""

    supported: ClassVar[frozenset[str]]

    def load(
        self, settings: LoadSettings, on_progress: LoadProgress | None = None
    ) -> dict[str, Any]: ...

    def generate(
        self, workload: Workload, sampling: Sampling, reuse_prefix: bool = False
    ) -> Run: ...

    def unload(self) -> dict[str, Any]:
        """Free the model; what the engine reported as it unloaded ({} for most)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


@dataclass(frozen=True)
class Target:
    """Where the study file says the model is; each backend reads what it needs."""

    model: str
    base_dir: Path
    host: str | None = None
    model_layers: int | None = None
    #: the canonical settings the study sets or searches
    settings: frozenset[str] = frozenset()
    #: llama-server: the binary to run
    server_binary: str | None = None
    #: the study's reasoning effort (a prediction setting some models take)
    reasoning_effort: str | None = None


class BackendBase:
    """Shared by the shipped backends: what is known about them before a trial exists, and
    the context manager. Subclasses implement ``load``, ``generate`` and ``unload``."""

    name: ClassVar[str]
    #: Canonical settings this backend can apply; anything else is rejected before a trial.
    supported: ClassVar[frozenset[str]]
    #: Why a canonical setting outside ``supported`` cannot be applied, for the error message.
    unsupported_why: ClassVar[Mapping[str, str]] = LMSTUDIO_ONLY
    #: False when the engine runs elsewhere (a server), so the worker's RSS says nothing.
    measures_own_memory: ClassVar[bool] = True
    #: whether a workload's GBNF ``grammar`` reaches the engine
    takes_grammar: ClassVar[bool] = True
    #: whether the study's model is an LM Studio model key (a preset can be installed there)
    names_lmstudio_models: ClassVar[bool] = False
    #: Constructor options used when the backend runs in a worker process.
    worker_options: ClassVar[Mapping[str, Any]] = {}
    #: The Python modules it imports when used, each with the package to install for it
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, model: str, **options: Any) -> None:
        raise NotImplementedError

    @classmethod
    def engine_version(cls, options: dict[str, Any]) -> str | None:
        """The engine's own version for the machine fingerprint (None: the package's)."""
        return None

    @classmethod
    def engine_reachable(cls, options: dict[str, Any]) -> bool:
        """Whether the engine a trial needs answers now (a server sweeper does not start);
        True for engines sweeper starts itself."""
        return True

    @classmethod
    def prepare(cls, target: Target) -> dict[str, Any]:
        """Check the model (and server) before any trial exists; return the constructor's
        keyword arguments for the workers (``model`` among them)."""
        return {"model": target.model}

    def load(
        self, settings: LoadSettings, on_progress: LoadProgress | None = None
    ) -> dict[str, Any]:
        raise NotImplementedError

    def generate(self, workload: Workload, sampling: Sampling, reuse_prefix: bool = False) -> Run:
        raise NotImplementedError

    def unload(self) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        self.unload()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: backend name -> "module:Class". Imported lazily: heavy SDKs load only when used.
BACKENDS: dict[str, str] = {
    "llama.cpp": "sweeper.backends.llamacpp:LlamaCppBackend",
    "llama-server": "sweeper.backends.llamaserver:LlamaServerBackend",
    "lmstudio": "sweeper.backends.lmstudio:LMStudioBackend",
    "fake": "sweeper.backends.fake:FakeBackend",
}


def backend_class(name: str) -> type[BackendBase]:
    try:
        target = BACKENDS[name]
    except KeyError:
        raise StudyFileError(
            f"unknown backend {name!r}; choose one of: {', '.join(sorted(BACKENDS))}"
        ) from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend {name!r} needs a package that is not installed ({exc}); "
            + distribution.install_hint(exc.name or name)
        ) from exc
    cls: type[BackendBase] = getattr(module, class_name)
    return cls


def unavailable(name: str) -> str | None:
    """Why this install cannot run backend ``name``, with what to install (None: it can):
    asked of the backend, before a study of it is offered a Sweep button."""
    try:
        cls = backend_class(name)
    except (BackendUnavailable, StudyFileError) as exc:
        return str(exc)
    for module, package in cls.requires:
        if importlib.util.find_spec(module) is None:
            return f"it needs {package}, not installed here: {distribution.install_hint(package)}"
    return None


def create_backend(name: str, **options: Any) -> Backend:
    backend: Backend = backend_class(name)(**options)
    return backend
