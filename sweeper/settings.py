"""Canonical load settings: one neutral vocabulary (LM Studio's), translated by each backend.

A setting left as ``None`` means "the backend's own default"; the backend reports what it
actually applied, which is stored next to what was requested.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sweeper.errors import StudyFileError

#: K/V cache element types llama.cpp and LM Studio both understand.
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
#: Cache types that llama.cpp only accepts for V when flash attention is on.
UNQUANTIZED_CACHE_TYPES = ("f32", "f16", "bf16")
#: Upper bounds, far above any machine, so that a typo is said rather than passed to an engine
#: (or to a page's arithmetic): tokens of context or batch, CPU threads, model layers.
MAX_CONTEXT = 1 << 24
MAX_THREADS = 4096
MAX_LAYERS = 4096


@dataclass(frozen=True)
class Param:
    """One canonical load parameter and its translations."""

    name: str
    type: type
    #: LM Studio's load-config key
    lmstudio: str
    #: llama-cpp-python's ``Llama(...)`` argument
    llamacpp: str
    #: llama-server's flag
    llama_server: str
    doc: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None


PARAMS: dict[str, Param] = {
    p.name: p
    for p in (
        Param(
            "context_length",
            int,
            "llm.load.contextLength",
            "n_ctx",
            "-c",
            "tokens the KV cache holds",
            low=1,
            high=MAX_CONTEXT,
        ),
        Param(
            "gpu_offload",
            float,
            "llm.load.llama.acceleration.offloadRatio",
            "n_gpu_layers",
            "-ngl",
            "share of layers on the GPU, 0..1 (llama.cpp: round(ratio x layers))",
            low=0.0,
            high=1.0,
        ),
        Param(
            "eval_batch_size",
            int,
            "llm.load.llama.evalBatchSize",
            "n_batch",
            "-b",
            "logical prompt batch",
            low=1,
            high=MAX_CONTEXT,
        ),
        Param(
            "physical_batch_size",
            int,
            "llm.load.llama.physicalBatchSize",
            "n_ubatch",
            "-ub",
            "physical (micro) batch, <= eval_batch_size",
            low=1,
            high=MAX_CONTEXT,
        ),
        Param(
            "cpu_threads",
            int,
            "llm.load.llama.cpuThreadPoolSize",
            "n_threads",
            "-t",
            "CPU threads for generation",
            low=1,
            high=MAX_THREADS,
        ),
        Param(
            "flash_attention",
            bool,
            "llm.load.llama.flashAttention",
            "flash_attn",
            "-fa",
            "flash attention",
        ),
        Param(
            "k_cache_type",
            str,
            "llm.load.llama.kCacheQuantizationType",
            "type_k",
            "-ctk",
            "K cache element type",
            choices=CACHE_TYPES,
        ),
        Param(
            "v_cache_type",
            str,
            "llm.load.llama.vCacheQuantizationType",
            "type_v",
            "-ctv",
            "V cache element type (quantized types need flash_attention)",
            choices=CACHE_TYPES,
        ),
        Param(
            "mmap",
            bool,
            "llm.load.llama.tryMmap",
            "use_mmap",
            "--no-mmap",
            "memory-map the weights",
        ),
        Param(
            "keep_in_memory",
            bool,
            "llm.load.llama.keepModelInMemory",
            "use_mlock",
            "--mlock",
            "lock the weights in RAM",
        ),
        Param(
            "offload_kv_cache",
            bool,
            "llm.load.offloadKVCacheToGpu",
            "offload_kqv",
            "-nkvo",
            "KV cache on the GPU",
        ),
        Param(
            "cpu_moe_layers",
            int,
            "llm.load.numCpuExpertLayersRatio",
            "",
            "--n-cpu-moe",
            "MoE expert weights of the first N layers kept on the CPU",
            low=0,
            high=MAX_LAYERS,
        ),
        Param(
            "gpu_strict_vram_cap",
            bool,
            "load.gpuStrictVramCap",
            "",
            "",
            "LM Studio: limit offload to dedicated GPU memory (fewer GPU layers, no spill)",
        ),
    )
}
#: Settings only LM Studio has, and what a llama.cpp backend says instead.
LMSTUDIO_ONLY = {
    "gpu_strict_vram_cap": "LM Studio's own load setting; llama.cpp has no such cap (its "
    "nearest, --fit, shrinks the context and moves expert tensors to the CPU until the load fits)",
}


@dataclass(frozen=True)
class LoadSettings:
    """A full load configuration in canonical names; ``None`` = backend default."""

    context_length: int | None = None
    gpu_offload: float | None = None
    eval_batch_size: int | None = None
    physical_batch_size: int | None = None
    cpu_threads: int | None = None
    flash_attention: bool | None = None
    k_cache_type: str | None = None
    v_cache_type: str | None = None
    mmap: bool | None = None
    keep_in_memory: bool | None = None
    offload_kv_cache: bool | None = None
    cpu_moe_layers: int | None = None
    gpu_strict_vram_cap: bool | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "settings") -> LoadSettings:
        for name, value in values.items():
            check_value(name, value, where)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The settings that are set (not left to the backend's default)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def replace(self, **changes: Any) -> LoadSettings:
        return dataclasses.replace(self, **changes)


def check_value(name: str, value: Any, where: str) -> None:
    """Raise StudyFileError unless ``value`` is a valid value for parameter ``name``."""
    param = PARAMS.get(name)
    if param is None:
        raise StudyFileError(
            f"{where}: unknown parameter {name!r}; known parameters: {', '.join(PARAMS)}"
        )
    ok_type = isinstance(value, param.type) and not (
        param.type is not bool and isinstance(value, bool)
    )
    if param.type is float and isinstance(value, int) and not isinstance(value, bool):
        ok_type = True
    if not ok_type:
        raise StudyFileError(
            f"{where}.{name}: expected {param.type.__name__}, got {type(value).__name__} {value!r}"
        )
    if value != value:  # NaN passes every comparison
        raise StudyFileError(f"{where}.{name}: not a number")
    if param.low is not None and value < param.low:
        raise StudyFileError(
            f"{where}.{name}: {shown(value)} is below the minimum {_bound(param.low)}"
        )
    if param.high is not None and value > param.high:
        raise StudyFileError(
            f"{where}.{name}: {shown(value)} is above the maximum {_bound(param.high)}"
        )
    if param.choices is not None and value not in param.choices:
        raise StudyFileError(f"{where}.{name}: {value!r} is not one of {', '.join(param.choices)}")


def shown(value: Any, limit: int = 24) -> str:
    """A value as a message quotes it: a 400-digit number cut short."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**limit else "a huge number"
    return text if len(text) <= limit + 2 else text[:limit] + "…"


def _bound(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def invalid_combination(settings: LoadSettings) -> str | None:
    """Why these settings cannot load together, or None. Checked before any reload."""
    v = settings.v_cache_type
    if v is not None and v not in UNQUANTIZED_CACHE_TYPES and settings.flash_attention is not True:
        return f"v_cache_type={v} needs flash_attention=true (llama.cpp refuses the context)"
    b, ub = settings.eval_batch_size, settings.physical_batch_size
    if b is not None and ub is not None and ub > b:
        return (
            f"physical_batch_size={ub} > eval_batch_size={b} "
            "(llama.cpp would silently clamp it to the eval batch)"
        )
    return None


def same_value(requested: Any, applied: Any) -> bool:
    """A setting as the engine reports it applied: the same, a ratio within 0.02 (LM Studio
    rounds the GPU offload)."""
    if isinstance(requested, float) and isinstance(applied, int | float):
        return abs(requested - applied) < 0.02
    return bool(requested == applied)
