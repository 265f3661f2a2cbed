"""Backends: the small interface every inference engine is driven through, and the registry.

A backend loads a model with canonical settings and generates from it, in sweeper's own types
(``LoadSettings`` in; the applied configuration and ``Run`` out). Every failure leaves it as a
``LoadError``/``GenerationError`` with a named reason, mapped in one place per backend; SDK
exceptions never leave a backend.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

from sweeper import distribution
from sweeper.errors import BackendUnavailable, ExportError, StudyFileError
from sweeper.measurement import Run
from sweeper.settings import LMSTUDIO_ONLY, LoadSettings
from sweeper.workloads import Sampling, Workload

#: Called with a load's progress, 0..1, by backends that report it.
LoadProgress = Callable[[float], None]


@dataclass(frozen=True)
class Loaded:
    """What a load applied, as the engine reports it: the settings in canonical names, the
    layers it put on the GPU and the model's layer count where it says them, and the engine's
    own extras (stored under the engine's name)."""

    settings: Mapping[str, Any] = field(default_factory=dict)
    gpu_layers: float | None = None
    model_layers: int | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)

    def with_extras(self, **more: Any) -> Loaded:
        return Loaded(self.settings, self.gpu_layers, self.model_layers, {**self.extras, **more})

    def stored(self) -> dict[str, Any]:
        """As a trial stores it (its ``applied`` attribute): the settings, then the rest."""
        out = {**self.settings, **self.extras}
        if self.model_layers is not None:
            out["model_layers"] = self.model_layers
        if self.gpu_layers is not None:
            out["gpu_layers"] = self.gpu_layers
        return out


def stored_model_layers(applied: Mapping[str, Any]) -> int | None:
    """The model's layer count from a trial's stored ``applied`` (``Loaded.stored``); studies
    from before the typed load result kept llama.cpp's under its extras."""
    layers = applied.get("model_layers")
    if layers is None:
        layers = applied.get("llama.cpp", {}).get("n_layers")
    return int(layers) if layers else None


@runtime_checkable
class Backend(Protocol):
    """What the runner drives. ``load`` returns what the engine applied (``Loaded``).
    ``generate`` processes the whole prompt (an honest time to first token) unless
    ``reuse_prefix``: then an engine that can keep what it already holds of the prompt does
    (depth probes, whose prompts extend each other, need not process it again)."""

    supported: ClassVar[frozenset[str]]

    def load(self, settings: LoadSettings, on_progress: LoadProgress | None = None) -> Loaded: ...

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


class PresetSource(Protocol):
    """What a preset is written from (``export.Preset``): the recommended settings of one
    workload, the model as the preset names it, and a header saying where they came from."""

    @property
    def model(self) -> str: ...
    @property
    def workload(self) -> str: ...
    @property
    def settings(self) -> LoadSettings: ...
    @property
    def n_layers(self) -> int | None: ...
    @property
    def reasoning_effort(self) -> str | None: ...
    def header(self) -> str: ...


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
    #: The Python package whose version stands for the engine's where the engine says none
    package: ClassVar[str | None] = None

    def __init__(self, model: str, **options: Any) -> None:
        raise NotImplementedError

    @classmethod
    def engine_version(cls, options: dict[str, Any]) -> str | None:
        """The engine's own version for the machine fingerprint (None: the package's)."""
        return None

    @classmethod
    def names_engine(cls, version: str) -> bool:
        """Whether a stored engine version names the engine itself (not a stand-in for it)."""
        return True

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

    @classmethod
    def parse_host(cls, text: str) -> str:
        """A user's address of the engine's server as ``host:port``."""
        return text

    @classmethod
    def model_file(cls, model: str, base_dir: Path) -> str:
        """The model as a preset names it to the engine (a local engine: the file's path)."""
        return model

    @classmethod
    def models(cls, host: str | None) -> tuple[str, list[str]]:
        """(where, the models found there) for the new-study form, for an engine that lists
        the models it has."""
        raise BackendUnavailable(f"{cls.name} does not list its models")

    @classmethod
    def current_settings(cls, model: str) -> tuple[dict[str, Any], str | None]:
        """The settings the engine loads ``model`` with today (canonical names), where it keeps
        them; else why there are none."""
        return {}, "only LM Studio keeps a model's load settings that sweeper can read"

    @classmethod
    def render_preset(cls, fmt: str, preset: PresetSource) -> str:
        """The preset in one of this backend's formats (``PRESET_FORMATS``)."""
        raise StudyFileError(f"{cls.name} writes no {fmt!r} preset")

    @classmethod
    def install(cls, preset: PresetSource) -> tuple[Path, Path | None]:
        """Install the preset where the engine reads a model's load settings: (the file
        written, the backup of what was there; None: nothing was)."""
        raise ExportError(f"{cls.name} has nowhere to install a preset; download it instead")

    @classmethod
    def undo_install(cls, target: Path, backup: Path | None) -> None:
        """Put back what ``install`` replaced (no backup: remove what it wrote)."""
        raise ExportError(f"{cls.name} has no installs to undo")

    @classmethod
    def install_path(cls, model: str) -> Path | None:
        """Where ``install`` would write the preset of ``model`` (None: nowhere)."""
        return None

    def load(self, settings: LoadSettings, on_progress: LoadProgress | None = None) -> Loaded:
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
    "lmstudio": "sweeper.backends.lmstudio:LMStudioBackend",
    "llama.cpp": "sweeper.backends.llamacpp:LlamaCppBackend",
    "llama-server": "sweeper.backends.llamaserver:LlamaServerBackend",
}
#: More backends, ``name=module:Class`` separated by commas, registered beside the shipped ones
#: (the tests' fake): read from the environment, so every process a sweep starts has them too.
EXTRA_BACKENDS = "SWEEPER_EXTRA_BACKENDS"


def registered() -> dict[str, str]:
    """Every backend this process can run, by name: the shipped ones and ``EXTRA_BACKENDS``."""
    out = dict(BACKENDS)
    for item in os.environ.get(EXTRA_BACKENDS, "").split(","):
        name, _, target = item.strip().partition("=")
        if name and ":" in target:
            out[name.strip()] = target.strip()
    return out


#: preset format -> (the backend that writes it, its file's suffix); sweeper's own JSON record
#: of a recommendation is ``export``'s
PRESET_FORMATS: dict[str, tuple[str, str]] = {
    "lmstudio": ("lmstudio", ".json"),
    "model-yaml": ("lmstudio", ".model.yaml"),
    "lms": ("lmstudio", ".lms.sh"),
    "sdk": ("lmstudio", ".sdk.py"),
    "llama-server": ("llama-server", ".llama-server.sh"),
}


def render_preset(fmt: str, preset: PresetSource) -> str:
    """The preset in ``fmt``, written by the backend that owns the format."""
    return backend_class(PRESET_FORMATS[fmt][0]).render_preset(fmt, preset)


def parse_host(text: str) -> str:
    """A user's address of an engine's server as ``host:port`` (the one engine sweeper reaches
    by address is LM Studio, which shows it as http://127.0.0.1:1234)."""
    return backend_class("lmstudio").parse_host(text)


def backend_class(name: str) -> type[BackendBase]:
    known = registered()
    try:
        target = known[name]
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
