"""The rig model behind sweeper's settings and LM Studio's load keys (simulated): a fake backend
whose measurements are the rig model's predictions with stated noise, on a simulated clock.

Noise (lognormal, multiplicative on decode tok/s and TTFT): one factor drawn per load (where
the engine's buffers land, the machine's state) and one per run. ``NOISE`` says where each
level comes from. Outputs have a fixed length per workload, so no configuration wins by
writing less. Never a user backend: tests and benchmarks only.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from typing import Any, ClassVar

from fake_backend import FakeBackend
from rig.physics import Load, Model, Placement, Rig, RigModel
from sweeper.backends import Loaded, LoadProgress
from sweeper.errors import GenerationError, LoadError
from sweeper.measurement import Run
from sweeper.settings import LoadSettings
from sweeper.workloads import Sampling, Workload

#: Tokens each of the article's workloads writes: its outputs were 2,331-3,102 (short) and
#: 2,454-2,784 (long) tokens; fixed here so that the guards see no shorter output.
OUTPUT_TOKENS = {"short": 2700, "long": 2600}
#: gpt-oss's harmony template around a prompt: the system message and the turn markers.
TEMPLATE_TOKENS = 70
#: LM Studio's defaults for what a load leaves out (0.3.22 on the article's PC)
DEFAULTS = {"context": 4096, "batch": 512, "threads": 4}


def prompt_tokens(text: str) -> int:
    """About one token per CJK character and four characters per token of Latin text."""
    wide = sum(1 for ch in text if ord(ch) > 0x2E80)
    return TEMPLATE_TOKENS + wide + math.ceil((len(text) - wide) / 4)


def output_text(tokens: int) -> str:
    """Text of about ``tokens`` tokens (four characters each), the same for every load."""
    words = ("moon ", "city ", "dome ", "crew ", "lamp ", "gate ", "farm ")
    return "".join(words[i % len(words)] for i in range(tokens))[: tokens * 4]


def load_of(settings: LoadSettings, model: Model) -> Load:
    """sweeper's canonical settings as a load in llama.cpp's terms (LM Studio's mapping: the
    offload ratio times the block count, rounded)."""
    s = settings
    ratio = 1.0 if s.gpu_offload is None else s.gpu_offload
    return Load(
        gpu_layers=round(ratio * model.layers),
        context=s.context_length or DEFAULTS["context"],
        batch=s.eval_batch_size or DEFAULTS["batch"],
        threads=s.cpu_threads or DEFAULTS["threads"],
        flash_attention=bool(s.flash_attention),
        k_cache=s.k_cache_type or "f16",
        v_cache=s.v_cache_type or "f16",
        mmap=s.mmap is not False,
        offload_kv=s.offload_kv_cache is not False,
        cpu_moe_layers=min(s.cpu_moe_layers or 0, model.layers),
        strict_vram_cap=bool(s.gpu_strict_vram_cap),
    )


@dataclass(frozen=True)
class Noise:
    load_sigma: float
    run_sigma: float
    source: str


NOISE = {
    "none": Noise(0.0, 0.0, "noiseless: the model itself"),
    "quiet": Noise(
        0.01,
        0.005,
        "assumed for a dedicated GPU box at rest (llama-bench's stddev_ts is typically under "
        "1% there); not measured by this project",
    ),
    "busy": Noise(
        0.05,
        0.02,
        "this project's development machine: A/A rounds of one configuration, each a fresh "
        "load, vary with a CV of 5.2% (benchmarks/results/noise.json, 2026-11-25); the run "
        "share of it assumed",
    ),
}


class SimClock:
    """Simulated seconds: advanced by what each load and generation would take."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RigEngine:
    """Predictions for loads and generations of one rig and model, with noise and a clock."""

    def __init__(
        self,
        rig: str = "article-pc-windows",
        noise: Noise = NOISE["none"],
        seed: int = 0,
        clock: SimClock | None = None,
    ) -> None:
        self.rm = RigModel(Rig.named(rig), Model.named())
        self.noise = noise
        self.rng = random.Random(seed)
        self.clock = clock or SimClock()
        self._place = functools.lru_cache(maxsize=4096)(self.rm.place)
        self._token_s = functools.lru_cache(maxsize=65536)(self._token_seconds)

    def _token_seconds(self, load: Load, depth: int) -> float:
        return self.rm.token_seconds(load, self._place(load), depth)

    def _draw(self, sigma: float) -> float:
        return math.exp(self.rng.gauss(0.0, sigma)) if sigma else 1.0

    def place(self, load: Load) -> Placement:
        place: Placement = self._place(load)
        return place

    def load(self, load: Load) -> tuple[Placement, float]:
        """(where it went, this load's noise factor), or LoadError out of memory."""
        place = self.place(load)
        if place.oom:
            raise LoadError(
                "oom",
                f"simulated {self.rm.rig.os}: CUDA out of memory: "
                f"{place.required_bytes / 2**30:.2f} GiB needed, "
                f"{place.available_bytes / 2**30:.2f} GiB free",
            )
        self.clock.advance(self.rm.load_s(load, place))
        return place, self._draw(self.noise.load_sigma)

    def mean_tok_s(self, load: Load, start: int, tokens: int) -> float:
        """Tokens over the seconds they take from depth ``start`` on: a token's time is close to
        linear in depth, so two depths (the quarter points, on a 64-token grid) integrate it."""
        steps = 2
        seconds = 0.0
        for i in range(steps):
            depth = (start + int((i + 0.5) * tokens / steps)) // 64 * 64
            seconds += self._token_s(load, depth) * tokens / steps
        return tokens / seconds

    def ttft_s(self, load: Load, prompt: int, cached: int = 0) -> float:
        """Prompt processing of what the engine does not hold yet, then the first token."""
        place = self.place(load)
        new = max(1, prompt - cached)
        return (
            self.rm.c.request_overhead_s
            + self.rm.prompt_seconds(load, new, place)
            + self._token_s(load, prompt // 64 * 64)
        )

    def run(
        self, load: Load, factor: float, workload: Workload, cached: int = 0
    ) -> tuple[float, float, int, int]:
        """(TTFT s, decode tok/s, prompt tokens, output tokens) of one generation; advances
        the clock by its duration."""
        prompt = prompt_tokens(workload.prompt + (workload.system or ""))
        out = min(workload.max_tokens, OUTPUT_TOKENS.get(workload.name, workload.max_tokens))
        ttft = self.ttft_s(load, prompt, cached) * self._draw(self.noise.run_sigma)
        tok_s = self.mean_tok_s(load, prompt, out) * factor * self._draw(self.noise.run_sigma)
        self.clock.advance(ttft + (out - 1) / tok_s)
        return ttft, tok_s, prompt, out


class RigBackend(FakeBackend):
    """The fake backend driven by the rig model: an out-of-memory load fails as LoadError,
    a spilled one loads; every generation is a prediction with noise on a simulated clock."""

    name: ClassVar[str] = "fake"

    def __init__(self, engine: RigEngine, model: str = "fake:rig") -> None:
        super().__init__(model)
        self.engine = engine
        self._load: Load | None = None
        self._factor = 1.0
        self._place: Placement | None = None
        self._held = 0  # prompt tokens the engine holds (reuse_prefix)

    def load(self, settings: LoadSettings, on_progress: LoadProgress | None = None) -> Loaded:
        applied = super().load(settings, on_progress)
        load = load_of(settings, self.engine.rm.model)
        self._place, self._factor = self.engine.load(load)
        self._load, self._held = load, 0
        return applied.with_extras(lmstudio={"num_gpu_layers": self._place.gpu_layers})

    def generate(self, workload: Workload, sampling: Sampling, reuse_prefix: bool = False) -> Run:
        if self._load is None or self._place is None:
            raise GenerationError("generation_failed", "simulated: no model loaded")
        cached = self._held if reuse_prefix else 0
        ttft, tok_s, prompt, out = self.engine.run(self._load, self._factor, workload, cached)
        self._held = prompt
        return Run(
            ttft_s=ttft,
            decode_tok_s=tok_s,
            output_tokens=out,
            prompt_tokens=prompt,
            stop_reason="max_tokens" if out >= workload.max_tokens else "eos",
            total_s=ttft + (out - 1) / tok_s,
            backend_stats={
                "num_gpu_layers": self._place.gpu_layers,
                "spilled_gib": round(self._place.spilled_bytes / 2**30, 2),
            },
            text=output_text(out),
        )

    def unload(self) -> dict[str, Any]:
        self._load = self._place = None
        return super().unload()
