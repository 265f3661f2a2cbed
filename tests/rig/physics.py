"""A physically grounded performance model of one machine running one GGUF model (simulated).

The machine (``Rig``) and the model (``Model``) are data files in ``data/``; the constants,
four of them fitted, are ``data/constants.toml``. For a load (``Load``, llama.cpp's terms) it
predicts what the engine does: out of memory or a spill into shared memory, the GPU layers
applied, the load time, the time to first token, and the decode speed at a depth.

Decode is memory-bound: each generated token reads every weight it uses once (the dense
attention weights, the active experts' share of the expert weights, the output head) and the
K/V cache up to the depth. Each part is read where it lives: VRAM at the GPU's bandwidth, RAM at
the CPU's (bounded by its threads), spilled VRAM over PCIe. CPU matrices can be compute-bound
instead (BF16 on a CPU without BF16 instructions). Every switch between devices in the graph
costs a synchronisation. A test instrument, never a user backend.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
GIB = 1024**3
GB = 1e9


def _load(cls: type[Any], path: Path) -> Any:
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    flat = {**raw, **raw.pop("tensor_bytes", {})}
    return cls(**{f.name: flat[f.name] for f in fields(cls) if f.name in flat})


@dataclass(frozen=True)
class Model:
    name: str
    file_bytes: int
    layers: int
    experts: int
    active_experts: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    sliding_window: int
    full_attention_layers: int
    experts_mxfp4: int
    dense_bf16: int
    output: int
    token_embd: int

    @classmethod
    def named(cls, name: str = "gpt-oss-20b-mxfp4") -> Model:
        model: Model = _load(cls, DATA / f"{name}.toml")
        return model

    def kv_bytes(self, cache_type: str) -> float:
        """K and V of one token in one layer: f16 is 2 bytes an element, q8_0 34 per 32."""
        per_element = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}.get(cache_type, 0.5625)
        return self.kv_heads * self.head_dim * per_element

    def cells(self, layer: int, tokens: int, ubatch: int = 1) -> int:
        """K/V cells a layer holds or reads: a sliding-window layer keeps the window (and, as
        llama.cpp's SWA cache does, room for a batch), a full-attention layer every token."""
        if layer % 2 == 1 or self.full_attention_layers >= self.layers:
            return tokens
        return min(tokens, self.sliding_window + ubatch)


@dataclass(frozen=True)
class Rig:
    name: str
    os: str
    gpu: str
    vram_gib: float
    gpu_bandwidth_gbs: float
    gpu_tflops: float
    vram_reserved_gib: float
    pcie_gbs: float
    cpu: str
    physical_cores: int
    logical_cores: int
    ram_gib: float
    ram_bandwidth_gbs: float
    disk_gbs: float
    native_bf16: bool
    quantized_kv_on_cpu: bool

    @classmethod
    def named(cls, name: str) -> Rig:
        rig: Rig = _load(cls, DATA / f"{name}.toml")
        return rig


@dataclass(frozen=True)
class Constants:
    gpu_bandwidth_efficiency: float
    gpu_compute_efficiency: float
    ram_efficiency: float
    core_bandwidth_gbs: float
    cpu_quant_gflops_per_core: float
    gpu_context_gib: float
    physical_batch: int
    op_offload_min_batch: int
    request_overhead_s: float
    load_fixed_s: float
    token_overhead_ms: float
    split_overhead_ms: float
    cpu_bf16_gflops_per_core: float
    spill_efficiency: float

    @classmethod
    def load(cls) -> Constants:
        constants: Constants = _load(cls, DATA / "constants.toml")
        return constants

    def with_fitted(self, **values: float) -> Constants:
        return replace(self, **values)


FITTED = ("token_overhead_ms", "split_overhead_ms", "cpu_bf16_gflops_per_core", "spill_efficiency")


@dataclass(frozen=True)
class Load:
    """A load in llama.cpp's terms. ``gpu_layers``: the last N layers on the GPU (llama.cpp
    keeps the first ones on the CPU); ``cpu_moe_layers``: the experts of the first N layers on
    the CPU; ``strict_vram_cap``: LM Studio lowers the GPU layers until the load fits."""

    gpu_layers: int
    context: int = 4096
    batch: int = 512
    threads: int = 4
    flash_attention: bool = False
    k_cache: str = "f16"
    v_cache: str = "f16"
    mmap: bool = True
    offload_kv: bool = True
    cpu_moe_layers: int = 0
    strict_vram_cap: bool = False


@dataclass(frozen=True)
class Placement:
    """Where the engine put things, and what that costs in VRAM."""

    gpu_layers: int
    required_bytes: float
    available_bytes: float
    #: bytes over VRAM served from shared memory (Windows); 0 when it fits
    spilled_bytes: float
    oom: bool

    @property
    def spills(self) -> bool:
        return self.spilled_bytes > 0


class RigModel:
    """One rig running one model."""

    def __init__(self, rig: Rig, model: Model, constants: Constants | None = None) -> None:
        self.rig, self.model = rig, model
        self.c = constants or Constants.load()

    # ---- memory ----------------------------------------------------------------------------

    def _on_gpu(self, load: Load, layer: int, gpu_layers: int) -> bool:
        return layer >= self.model.layers - gpu_layers

    def _experts_on_gpu(self, load: Load, layer: int, gpu_layers: int) -> bool:
        return self._on_gpu(load, layer, gpu_layers) and layer >= load.cpu_moe_layers

    def _attention_on_gpu(self, load: Load, layer: int, gpu_layers: int) -> bool:
        quantized = load.k_cache not in ("f16", "f32", "bf16") or load.v_cache not in (
            "f16",
            "f32",
            "bf16",
        )
        on_cpu = quantized and self.rig.quantized_kv_on_cpu
        return self._on_gpu(load, layer, gpu_layers) and load.offload_kv and not on_cpu

    def required_vram(self, load: Load, gpu_layers: int) -> float:
        """Weights placed on the GPU, the K/V cache of its layers, the compute buffer and the
        driver's context. The compute buffer holds one physical batch's logits (the vocabulary
        in f32) and, without flash attention, its attention scores over the whole context."""
        m, ub = self.model, min(load.batch, self.c.physical_batch)
        total = self.c.gpu_context_gib * GIB
        kv = (m.kv_bytes(load.k_cache) + m.kv_bytes(load.v_cache)) / 2
        for layer in range(m.layers):
            if self._on_gpu(load, layer, gpu_layers):
                total += m.dense_bf16
            if self._experts_on_gpu(load, layer, gpu_layers):
                total += m.experts_mxfp4
            if self._attention_on_gpu(load, layer, gpu_layers):
                total += 2 * kv * m.cells(layer, load.context, ub)
        if gpu_layers >= m.layers:  # llama.cpp puts the output head on the GPU with the last
            total += m.output
        if gpu_layers > 0:
            total += ub * m.vocab * 4
            if not load.flash_attention:
                total += ub * load.context * m.heads * 4
        return total

    def place(self, load: Load) -> Placement:
        """What the engine does with the load: on Linux a load over VRAM fails (CUDA out of
        memory); on Windows the NVIDIA driver's system-memory fallback serves the overflow from
        shared memory over PCIe; LM Studio's strict cap lowers the GPU layers until it fits."""
        available = (self.rig.vram_gib - self.rig.vram_reserved_gib) * GIB
        layers = min(load.gpu_layers, self.model.layers)
        if load.strict_vram_cap:
            while layers > 0 and self.required_vram(load, layers) > available:
                layers -= 1
        need = self.required_vram(load, layers)
        over = max(0.0, need - available)
        oom = over > 0 and self.rig.os != "windows"
        return Placement(layers, need, available, 0.0 if oom else over, oom)

    # ---- speed -----------------------------------------------------------------------------

    def _cpu_seconds(
        self, load: Load, read_bytes: float, bf16_flops: float, q_flops: float
    ) -> float:
        """The CPU's part of a token: bound by memory bandwidth (each thread reads at most a
        core's share, all together at most the DIMMs') or by arithmetic, whichever is slower.
        llama.cpp splits each matrix evenly over its threads and waits for the slowest: a
        thread sharing a core with another (more threads than physical cores) runs at half
        speed and holds every other thread up."""
        if read_bytes <= 0 and bf16_flops <= 0 and q_flops <= 0:
            return 0.0
        r, c = self.rig, self.c
        threads = max(1, min(load.threads, r.logical_cores))
        cores = min(threads, r.physical_cores)
        bandwidth = min(r.ram_bandwidth_gbs * c.ram_efficiency, cores * c.core_bandwidth_gbs) * GB
        bf16_rate = c.cpu_quant_gflops_per_core if r.native_bf16 else c.cpu_bf16_gflops_per_core
        compute = bf16_flops / (bf16_rate * 1e9) + q_flops / (c.cpu_quant_gflops_per_core * 1e9)
        slowest = 0.5 if threads > r.physical_cores else 1.0  # the split is by thread
        compute /= threads * slowest
        return max(read_bytes / bandwidth, compute)

    def token_seconds(self, load: Load, place: Placement, depth: int) -> float:
        """One decoded token at ``depth`` tokens of context."""
        m, c = self.model, self.c
        share = m.active_experts / m.experts
        gpu_bytes = cpu_bytes = bf16_flops = q_flops = 0.0
        gpu_resident = 1.0
        splits, prev = 0, None
        kv = (m.kv_bytes(load.k_cache) + m.kv_bytes(load.v_cache)) / 2
        for layer in range(m.layers):
            on_gpu = self._on_gpu(load, layer, place.gpu_layers)
            cells = m.cells(layer, depth)
            # attention reads the cache; without flash attention it also writes and reads
            # the scores (heads x cells in f32)
            att = 2 * kv * cells + (0 if load.flash_attention else 2 * 4 * m.heads * cells)
            devices = []
            if on_gpu:
                gpu_bytes += m.dense_bf16
                gpu_resident += m.dense_bf16
                devices.append("gpu")
            else:
                cpu_bytes += m.dense_bf16
                bf16_flops += m.dense_bf16  # 2 bytes a weight, 2 flops a weight
                devices.append("cpu")
            if self._attention_on_gpu(load, layer, place.gpu_layers):
                gpu_bytes += att
                devices.append("gpu")
            else:
                cpu_bytes += att
                devices.append("cpu")
            experts = m.experts_mxfp4 * share
            if self._experts_on_gpu(load, layer, place.gpu_layers):
                gpu_bytes += experts
                gpu_resident += m.experts_mxfp4
                devices.append("gpu")
            else:
                cpu_bytes += experts
                q_flops += 2 * experts / (4.25 / 8)
                devices.append("cpu")
            for d in devices:  # every change of device is a split of llama.cpp's graph
                splits += prev is not None and d != prev
                prev = d
        if place.gpu_layers >= m.layers:
            gpu_bytes += m.output
            gpu_resident += m.output
        else:
            cpu_bytes += m.output
            q_flops += 2 * m.output / (4.5 / 8)
            splits += prev == "gpu"
        # spilled VRAM: the overflow is taken as a uniform slice of what lives on the GPU, so
        # a token reads it in the proportion it reads the rest, over PCIe
        spilled = min(1.0, place.spilled_bytes / gpu_resident) if gpu_resident > 1 else 0.0
        gpu_s = gpu_bytes * (1 - spilled) / (
            self.rig.gpu_bandwidth_gbs * GB * c.gpu_bandwidth_efficiency
        ) + gpu_bytes * spilled / (self.rig.pcie_gbs * GB * c.spill_efficiency)
        cpu_s = self._cpu_seconds(load, cpu_bytes, bf16_flops, q_flops)
        return gpu_s + cpu_s + (splits * c.split_overhead_ms + c.token_overhead_ms) / 1000

    def decode_tok_s(self, load: Load, depth: int, place: Placement | None = None) -> float:
        place = place or self.place(load)
        if place.oom:
            return 0.0
        return 1.0 / self.token_seconds(load, place, depth)

    def prompt_seconds(
        self, load: Load, prompt_tokens: int, place: Placement | None = None
    ) -> float:
        """Prompt processing, one physical batch at a time: the GPU's arithmetic on the active
        weights; weights held on the CPU are copied over PCIe for each batch big enough (as
        llama.cpp does), smaller batches are computed on the CPU; spilled weights cross PCIe
        once per batch."""
        place = place or self.place(load)
        m, c, r = self.model, self.c, self.rig
        ub = min(load.batch, c.physical_batch)
        cpu_weights = sum(
            (0 if self._on_gpu(load, i, place.gpu_layers) else m.dense_bf16)
            + (0 if self._experts_on_gpu(load, i, place.gpu_layers) else m.experts_mxfp4)
            for i in range(m.layers)
        ) + (0 if place.gpu_layers >= m.layers else m.output)
        active = m.layers * (
            m.dense_bf16 / 2 + m.experts_mxfp4 / (4.25 / 8) * m.active_experts / m.experts
        )
        seconds, left = 0.0, prompt_tokens
        while left > 0:
            n = min(ub, left)
            left -= n
            seconds += 2 * active * n / (r.gpu_tflops * 1e12 * c.gpu_compute_efficiency)
            if n >= c.op_offload_min_batch:
                seconds += cpu_weights / (r.pcie_gbs * GB)
            else:  # about 0.6 bytes a weight over the CPU's share (mostly MXFP4)
                seconds += self._cpu_seconds(load, cpu_weights, 0.0, n * 2 * cpu_weights / 0.6)
            seconds += place.spilled_bytes / (r.pcie_gbs * GB * c.spill_efficiency)
        return seconds

    def ttft_s(self, load: Load, prompt_tokens: int, place: Placement | None = None) -> float:
        place = place or self.place(load)
        if place.oom:
            return math.inf
        return (
            self.c.request_overhead_s
            + self.prompt_seconds(load, prompt_tokens, place)
            + self.token_seconds(load, place, prompt_tokens)
        )

    def load_s(self, load: Load, place: Placement | None = None) -> float:
        """Read the file from disk (without mmap it is copied once more in RAM), copy the GPU's
        part over PCIe, set up the context."""
        place = place or self.place(load)
        r, m = self.rig, self.model
        seconds = m.file_bytes / (r.disk_gbs * GB) + self.c.load_fixed_s
        seconds += min(place.required_bytes, place.available_bytes) / (r.pcie_gbs * GB)
        if place.spills:  # the driver moves the overflow into shared memory as well
            seconds += place.spilled_bytes / (r.pcie_gbs * GB)
        if not load.mmap:
            seconds += m.file_bytes / (r.ram_bandwidth_gbs * self.c.ram_efficiency * GB / 2)
        return seconds
