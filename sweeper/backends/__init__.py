"""Backends: the small interface every inference engine is driven through, and the registry."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

from sweeper.errors import BackendUnavailable, StudyFileError
from sweeper.measure import Run
from sweeper.settings import LoadSettings
from sweeper.workloads import Sampling, Workload


@runtime_checkable
class Backend(Protocol):
    """Loads a model with given settings and generates from it, in sweeper's own types.

    ``load`` returns the *applied* configuration as the engine reports it (canonical names where
    there is one, engine-specific extras allowed). Failures are raised as ``LoadError`` /
    ``GenerationError`` with a named reason; SDK exceptions never leave a backend.
    """

    name: ClassVar[str]
    #: Canonical settings this backend can apply; anything else is rejected before a trial.
    supported: ClassVar[frozenset[str]]
    #: Why a canonical setting outside ``supported`` cannot be applied, for the error message.
    unsupported_why: ClassVar[dict[str, str]]
    #: Constructor options used when the backend runs in a worker process.
    child_options: ClassVar[dict[str, Any]]
    #: False when the engine runs elsewhere (a server), so the worker's RSS says nothing.
    measures_own_memory: ClassVar[bool]

    @staticmethod
    def preflight(
        model: str, base_dir: Path, host: str | None = None, model_layers: int | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Check the model (and server) before any trial exists; return the model to load
        and the constructor options for the workers."""
        ...

    def load(self, settings: LoadSettings) -> dict[str, Any]: ...

    def generate(self, workload: Workload, sampling: Sampling) -> Run: ...

    def unload(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


#: backend name -> "module:Class". Imported lazily: heavy SDKs load only when used.
BACKENDS: dict[str, str] = {
    "llama.cpp": "sweeper.backends.llamacpp:LlamaCppBackend",
    "lmstudio": "sweeper.backends.lmstudio:LMStudioBackend",
    "fake": "sweeper.backends.fake:FakeBackend",
}


def backend_class(name: str) -> type[Any]:
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
            f"backend {name!r} needs a package that is not installed ({exc}); run `make install`"
        ) from exc
    cls: type[Any] = getattr(module, class_name)
    return cls


def create_backend(name: str, model: str, **options: Any) -> Backend:
    backend: Backend = backend_class(name)(model, **options)
    return backend
