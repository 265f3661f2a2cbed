"""LM Studio's load config: sweeper's settings as LM Studio's keys and encodings (the SDK's
typed config, raw wire fields, a preset file's ``load.fields``) and back."""

from __future__ import annotations

from typing import Any

from sweeper.backends.lmstudio import sdk as lmstudio_sdk
from sweeper.errors import LoadError
from sweeper.settings import PARAMS, LoadSettings

#: Canonical settings sent through the SDK's typed config (camelCase dict keys).
SDK_KEYS = {
    "context_length": "contextLength",
    "eval_batch_size": "evalBatchSize",
    "flash_attention": "flashAttention",
    "k_cache_type": "llamaKCacheQuantizationType",
    "v_cache_type": "llamaVCacheQuantizationType",
    "mmap": "tryMmap",
    "keep_in_memory": "keepModelInMemory",
    "offload_kv_cache": "offloadKVCacheToGpu",
    "gpu_strict_vram_cap": "gpuStrictVramCap",
}
#: Canonical settings SDK 1.5.0 cannot express: sent as raw KV fields under their LM Studio
#: keys (see load_with_raw_fields).
RAW_SETTINGS = ("cpu_threads", "physical_batch_size", "cpu_moe_layers")


def moe_ratio(cpu_moe_layers: int, n_layers: int) -> float:
    """sweeper's layer count as LM Studio's numCpuExpertLayersRatio."""
    return round(min(1.0, cpu_moe_layers / n_layers), 4)


def to_config(
    settings: LoadSettings, n_layers: int | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Canonical settings -> (the SDK's typed config dict, raw wire fields).

    Every key is checked against what the SDK actually encodes: the SDK silently drops keys it
    does not know, and a sweep must never measure a setting that was not sent.
    """
    config: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    for name, value in settings.to_dict().items():
        if name == "gpu_offload":
            config["gpu"] = {"ratio": float(value)}
        elif name in SDK_KEYS:
            config[SDK_KEYS[name]] = value
        elif name == "cpu_moe_layers":
            if not n_layers:
                raise LoadError(
                    "unsupported",
                    "cpu_moe_layers needs the model's layer count; "
                    "set model_layers in the study file",
                )
            raw[PARAMS[name].lmstudio] = moe_ratio(value, n_layers)
        elif name in RAW_SETTINGS:
            raw[PARAMS[name].lmstudio] = value
        else:
            raise LoadError("unsupported", f"{name}: not mapped for LM Studio")
    expected = {PARAMS[name].lmstudio for name, key in SDK_KEYS.items() if key in config}
    if "gpu" in config:
        expected.add(PARAMS["gpu_offload"].lmstudio)
    lmstudio_sdk.check_encoded(config, expected)
    return config, raw


def preset_fields(settings: LoadSettings, n_layers: int | None) -> list[dict[str, Any]]:
    """Canonical settings as LM Studio's ``load.fields`` (wire keys and encodings), as its
    preset and model default files hold them."""
    out = []
    for name, value in settings.to_dict().items():
        if name in ("k_cache_type", "v_cache_type"):
            value = {"checked": True, "value": value}
        elif name == "cpu_moe_layers":
            if not n_layers:
                continue  # a ratio needs the layer count; listed in the file's notes instead
            value = moe_ratio(value, n_layers)
        out.append({"key": PARAMS[name].lmstudio, "value": value})
    return out


def from_wire(fields: dict[str, Any], n_layers: int | None) -> dict[str, Any]:
    """Applied wire fields -> canonical names (what LM Studio says it applied)."""
    applied: dict[str, Any] = {}
    for name, param in PARAMS.items():
        if param.lmstudio not in fields:
            continue
        value = fields[param.lmstudio]
        if isinstance(value, dict) and "checked" in value:
            value = value["value"] if value["checked"] else "f16"
        if name == "gpu_offload":
            value = {"max": 1.0, "off": 0.0}.get(value, value)
        if name == "cpu_moe_layers":
            ratio = {"max": 1.0, "off": 0.0}.get(value, value)
            value = round(float(ratio) * n_layers) if n_layers else ratio
        applied[name] = value
    return applied
