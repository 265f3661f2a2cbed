"""A simulated engine behind the LM Studio test server: the article's PC (tests/rig), simulated.

The model entry is not a file: it is the rig model's gpt-oss-20b (MXFP4). A load config from the
real SDK is answered as the rig says: out of memory (a Linux rig over VRAM), a spill (a Windows
rig over VRAM: it loads), LM Studio's strict VRAM cap lowering the GPU layers, and the GPU layers
placed reported back. Tokens are streamed at the predicted pace, sped up ``pace`` times (said in
the version reply, which the machine fingerprint records). No llama.cpp model is loaded.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

from rig.physics import Load
from rig.sim import NOISE, Noise, RigEngine, output_text, prompt_tokens
from websockets.asyncio.server import ServerConnection

from lmstudio_server.server import (
    KNOWN_LOAD_KEYS,
    Instance,
    LMSError,
    LMStudioTestServer,
    ServerModel,
    collapse,
    unchecked,
)

MODEL_KEY = "openai/gpt-oss-20b"


class _NoModel:
    """Stands where the real server keeps a llama.cpp model."""

    def close(self) -> None:
        pass


def load_of_fields(fields: dict[str, Any], layers: int) -> Load:
    """LM Studio's load keys as a load in llama.cpp's terms (LM Studio's meaning of each,
    written from its documentation, independently of sweeper's mapping)."""
    ratio = fields.get("llm.load.llama.acceleration.offloadRatio", "max")
    ratio = {"max": 1.0, "off": 0.0}.get(ratio, ratio)
    moe = fields.get("llm.load.numCpuExpertLayersRatio", "off")
    moe = {"max": 1.0, "off": 0.0}.get(moe, moe)
    return Load(
        gpu_layers=round(float(ratio) * layers),
        context=int(fields.get("llm.load.contextLength", 4096)),
        batch=int(fields.get("llm.load.llama.evalBatchSize", 512)),
        threads=int(fields.get("llm.load.llama.cpuThreadPoolSize", 4)),
        flash_attention=bool(fields.get("llm.load.llama.flashAttention", False)),
        k_cache=unchecked(fields.get("llm.load.llama.kCacheQuantizationType"), "f16"),
        v_cache=unchecked(fields.get("llm.load.llama.vCacheQuantizationType"), "f16"),
        mmap=bool(fields.get("llm.load.llama.tryMmap", True)),
        offload_kv=bool(fields.get("llm.load.offloadKVCacheToGpu", True)),
        cpu_moe_layers=round(float(moe) * layers),
        strict_vram_cap=bool(fields.get("load.gpuStrictVramCap", False)),
    )


class SimulatedLMStudioServer(LMStudioTestServer):
    """``with SimulatedLMStudioServer("article-pc-windows", pace=50) as server:`` serves
    ``openai/gpt-oss-20b`` as the rig model predicts it, ``pace`` times faster than predicted."""

    def __init__(
        self,
        rig: str = "article-pc-windows",
        pace: float = 1.0,
        noise: Noise = NOISE["none"],
        seed: int = 0,
        **options: Any,
    ) -> None:
        self.engine = RigEngine(rig, noise, seed)
        self.pace = pace
        model = ServerModel(MODEL_KEY, f"simulated:{rig}", "gpt-oss", max_context_length=131072)
        version = f"0.3.22 (simulated: {rig} rig model, pace x{pace:g})"
        super().__init__([model], app_version=version, **options)
        self.factors: dict[str, float] = {}

    def _info(self, m: ServerModel) -> dict[str, Any]:
        return {
            "type": "llm",
            "modelKey": m.key,
            "format": "gguf",
            "displayName": f"{m.key} (simulated)",
            "path": m.path,
            "sizeBytes": self.engine.rm.model.file_bytes,
            "vision": False,
            "trainedForToolUse": True,
            "maxContextLength": m.max_context_length,
            "architecture": m.architecture,
            "paramsString": "20B",
            "quantization": {"name": "MXFP4", "bits": 4},
        }

    def _load(self, param: dict[str, Any], send: Callable[[dict[str, Any]], None]) -> None:
        self.log.loads.append(param)
        model = self.models.get(param["modelKey"])
        if model is None:
            raise LMSError(
                f"Model {param['modelKey']!r} not found", code="generic.noModelMatchingQuery"
            )
        fields = {**self.default_load, **collapse(param.get("loadConfigStack", {}))}
        unknown = sorted(set(fields) - KNOWN_LOAD_KEYS)
        if unknown:
            raise LMSError("Failed to load model", f"unknown load config keys {unknown}")
        if self.fail_load and (error := self.fail_load(fields)) is not None:
            raise error
        identifier = param.get("identifier") or model.key
        load = load_of_fields(fields, self.engine.rm.model.layers)
        send({"type": "progress", "progress": 0.0})
        place = self.engine.place(load)
        if place.oom:
            raise LMSError(
                "Failed to load model: out of GPU memory (simulated)",
                f"{place.required_bytes / 2**30:.2f} GiB needed, "
                f"{place.available_bytes / 2**30:.2f} GiB free on the simulated "
                f"{self.engine.rm.rig.os} rig",
            )
        before = self.engine.clock.now
        _, factor = self.engine.load(load)
        time.sleep((self.engine.clock.now - before) / self.pace)
        send({"type": "progress", "progress": 1.0})
        inst = Instance(
            model,
            identifier,
            uuid.uuid4().hex[:16],
            [{"key": k, "value": v} for k, v in fields.items()],
            cast(Any, _NoModel()),
            load.context,
            place.gpu_layers,
        )
        with self._lock:
            if identifier in self.instances:
                raise LMSError("Failed to load model", f"{identifier!r} already exists")
            self.instances[identifier] = inst
            self.factors[identifier] = factor
        send({"type": "success", "info": self._instance_info(inst)})

    def _generate(
        self,
        inst: Instance,
        ws: ServerConnection,
        param: dict[str, Any],
        send: Callable[[dict[str, Any]], None],
        cancel: threading.Event,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        cfg = collapse(param.get("predictionConfigStack", {}))
        max_tokens = int(unchecked(cfg.get("llm.prediction.maxPredictedTokens"), 256))
        fields = {f["key"]: f["value"] for f in inst.fields}
        load = load_of_fields(fields, self.engine.rm.model.layers)
        messages = param["history"]["messages"]
        text = "".join(
            "".join(p.get("text", "") for p in m["content"])
            if isinstance(m["content"], list)
            else str(m["content"])
            for m in messages
        )
        prompt = prompt_tokens(text)
        if prompt + max_tokens > inst.context_length:
            raise LMSError(
                "Context length exceeded", f"{prompt} + {max_tokens} > {inst.context_length}"
            )
        self.log.predictions.append(cfg)
        factor = self.factors.get(inst.identifier, 1.0)
        tok_s = self.engine.mean_tok_s(load, prompt, max_tokens) * factor
        start = time.perf_counter()
        first = start + self.engine.ttft_s(load, prompt) / self.pace
        words = output_text(max_tokens)
        times: list[float] = []
        stop = "maxPredictedTokensReached"
        for i in range(max_tokens):
            # each token at its own scheduled time, so the server's overhead does not add up
            time.sleep(max(0.0, first + i / (tok_s * self.pace) - time.perf_counter()))
            if cancel.is_set():
                stop = "userStopped"
                break
            times.append(time.perf_counter())
            chunk = {"content": words[4 * i : 4 * i + 4], "tokensCount": 1}
            fragment = {**chunk, "containsDrafted": False, "reasoningType": "none"}
            send({"type": "fragment", "fragment": fragment})
        self._success(send, inst, cfg, times, start, prompt, stop)
