"""The LM Studio backend, through the lmstudio Python SDK (pinned 1.5.0).

Each trial unloads sweeper's previous instance, loads a new one with ``load_new_instance``
(never ``model(key, config=...)``, which ignores the config of an already loaded model), reads
back what LM Studio applied, and streams every workload through ``respond_stream``.
"""

from __future__ import annotations

import contextlib
import difflib
import time
from typing import TYPE_CHECKING, Any, ClassVar

from sweeper import reasoning
from sweeper.backends import BackendBase, LoadProgress, Target, gguf, lmstudio_sdk
from sweeper.backends.lmstudio_errors import EVICTED, errors
from sweeper.backends.lmstudio_host import find_host as find_host  # the service calls it here
from sweeper.backends.lmstudio_host import reachable
from sweeper.backends.lmstudio_host import sdk as _sdk
from sweeper.errors import (
    BackendUnavailable,
    EngineLost,
    GenerationError,
    LoadError,
    StudyFileError,
    TrialFailure,
)
from sweeper.measurement import Run
from sweeper.settings import PARAMS, LoadSettings
from sweeper.workloads import Sampling, Workload

if TYPE_CHECKING:
    import lmstudio

IDENTIFIER_PREFIX = "sweeper-"
#: Seconds the sync API may wait between messages (a long load sends few).
SYNC_TIMEOUT_S = 3600

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
#: What LM Studio's MLX engine (Apple Silicon, safetensors models) takes of sweeper's settings;
#: every ``llm.load.llama.*`` key, the GPU offload ratio and the MoE keys are llama.cpp's only.
MLX_SETTINGS = frozenset({"context_length"})
#: Reasoning effort is no prediction key in LM Studio: it is a model.yaml custom field of the
#: hub's gpt-oss models (community GGUF copies lack it, and LM Studio then only logs a warning).
REASONING_EFFORT_FIELDS = {
    "openai/gpt-oss-20b": "ext.virtualModel.customField.openai.gptOss20b.reasoningEffort",
    "openai/gpt-oss-120b": "ext.virtualModel.customField.openai.gptOss120b.reasoningEffort",
}
STOP_REASONS = {
    "eosFound": "eos",
    "maxPredictedTokensReached": "max_tokens",
    "contextLengthReached": "context_length",
    "stopStringFound": "stop_string",
    "userStopped": "cancelled",
}


def downloaded_models(host: str) -> dict[str, Any]:
    """The models LM Studio at ``host`` has downloaded, by model key."""
    lms = _sdk()
    try:
        with lms.Client(host) as client:
            return {m.model_key: m for m in client.list_downloaded_models()}
    except lms.LMStudioError as exc:
        raise BackendUnavailable(f"LM Studio at {host} did not answer: {exc}") from exc


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


class LMStudioBackend(BackendBase):
    name: ClassVar[str] = "lmstudio"
    requires = (("lmstudio", "lmstudio"),)
    supported: ClassVar[frozenset[str]] = frozenset(PARAMS)
    measures_own_memory: ClassVar[bool] = False
    takes_grammar: ClassVar[bool] = False
    names_lmstudio_models: ClassVar[bool] = True

    def __init__(self, model: str, host: str | None = None, n_layers: int | None = None) -> None:
        self.model_key = model
        self.host = host
        self.n_layers = n_layers
        self._client: lmstudio.Client | None = None
        self._model: Any = None
        self._host: str | None = None
        self._identifier: str | None = None

    @classmethod
    def engine_version(cls, options: dict[str, Any]) -> str | None:
        from sweeper.backends.lmstudio_engine import engine  # it finds LM Studio through here

        return engine(options.get("host"))

    @classmethod
    def engine_reachable(cls, options: dict[str, Any]) -> bool:
        return reachable(options["host"])

    @classmethod
    def prepare(cls, target: Target) -> dict[str, Any]:
        """Find LM Studio, check the model key; before any trial exists."""
        model = target.model
        host = find_host(target.host)
        keys = downloaded_models(host)
        if model not in keys:
            close = difflib.get_close_matches(model, list(keys), n=5, cutoff=0.3)
            hint = (
                f"; close matches: {', '.join(close)}"
                if close
                else f"; downloaded: {', '.join(sorted(keys)) or 'none'}"
            )
            raise BackendUnavailable(
                f"LM Studio at {host} has no model {model!r}{hint} "
                f"(download it with `lms get {model}`)"
            )
        info = keys[model].info
        if getattr(info, "format", "gguf") == "safetensors":
            refused = sorted(target.settings - MLX_SETTINGS)
            if refused:
                raise StudyFileError(
                    f"{', '.join(refused)}: LM Studio runs {model} on its MLX engine, which "
                    "takes no such setting (llama.cpp engine only); remove "
                    f"{'it' if len(refused) == 1 else 'them'} from the study"
                )
        if target.reasoning_effort and model not in REASONING_EFFORT_FIELDS:
            raise StudyFileError(
                f"reasoning_effort: LM Studio takes it only as a custom field of its hub models "
                f"{' and '.join(REASONING_EFFORT_FIELDS)}; {model} has none, so it would be "
                "ignored: remove reasoning_effort from the study"
            )
        n_layers = target.model_layers or _layers_from_gguf(getattr(keys[model], "path", ""))
        return {"model": model, "host": host, "n_layers": n_layers}

    def _connect(self) -> lmstudio.Client:
        lms = _sdk()
        if self._client is None:
            lms.set_sync_api_timeout(SYNC_TIMEOUT_S)
            try:
                self._host = find_host(self.host)
                self._client = lms.Client(self._host)
                self._client.__enter__()
            except (BackendUnavailable, lms.LMStudioError, OSError) as exc:
                self._client = None
                raise EngineLost(f"cannot connect to LM Studio: {exc}") from exc
        return self._client

    def _gone(self, exc: Exception) -> EngineLost | None:
        """Why LM Studio is gone, if it is: not answering, or answering without sweeper's
        instance (a restart, or someone unloaded it); None for a connection that merely
        dropped."""
        host = self._host
        if host is None:
            return None
        if not reachable(host):
            return EngineLost(
                f"LM Studio stopped answering at {host} (quit, crashed or restarting)"
            )
        if self._identifier is None:
            return None
        lms = _sdk()
        try:
            with lms.Client(host) as client:
                loaded = {h.identifier for h in client.llm.list_loaded()}
        except (lms.LMStudioError, BackendUnavailable, OSError) as again:
            return EngineLost(f"LM Studio at {host} stopped answering: {again}")
        return None if self._identifier in loaded else EngineLost(f"{EVICTED}: {exc}")

    def _others(self) -> set[str]:
        """What else LM Studio has loaded (other models, other apps' instances)."""
        assert self._client is not None
        return {
            h.identifier for h in self._client.llm.list_loaded() if h.identifier != self._identifier
        }

    def load(
        self, settings: LoadSettings, on_progress: LoadProgress | None = None
    ) -> dict[str, Any]:
        client = self._connect()
        config, raw = to_config(settings, self.n_layers)
        identifier = f"{IDENTIFIER_PREFIX}{int(time.time() * 1000)}"
        with errors("load", self._gone):
            self._unload_ours(client)
            self._model = lmstudio_sdk.load_with_raw_fields(
                client, self.model_key, identifier, config, raw, on_progress
            )
            self._identifier = identifier
            fields = lmstudio_sdk.raw_load_config(client, identifier)
            context = self._model.get_context_length()
            others = sorted(self._others())
        applied = from_wire(fields, self.n_layers)
        applied["context_length"] = context
        applied["lmstudio"] = {
            "identifier": identifier,
            "model": self.model_key,
            "raw_fields_sent": raw,
            "fields": fields,
            # another model resident beside the measured one shares the GPU and the memory
            "others_loaded": others,
        }
        return applied

    def _unload_ours(self, client: lmstudio.Client) -> None:
        """Unload every instance sweeper loaded, including a killed worker's leftovers."""
        for handle in client.llm.list_loaded():
            if handle.identifier.startswith(IDENTIFIER_PREFIX):
                handle.unload()
        self._model = None
        self._identifier = None

    def generate(self, workload: Workload, sampling: Sampling, reuse_prefix: bool = False) -> Run:
        lms = _sdk()
        if self._model is None:
            raise GenerationError("generation_failed", "no model loaded")
        chat = lms.Chat(workload.system) if workload.system else lms.Chat()
        chat.add_user_message(workload.prompt)
        config = {
            "maxTokens": workload.max_tokens,
            "temperature": sampling.temperature,
            "topKSampling": sampling.top_k,
            "topPSampling": sampling.top_p,
            "minPSampling": sampling.min_p,
            "repeatPenalty": sampling.repeat_penalty,
        }
        raw = {}
        if sampling.reasoning_effort:
            raw[REASONING_EFFORT_FIELDS[self.model_key]] = sampling.reasoning_effort
        times: list[float] = []
        answer: list[str] = []
        typed = 0  # tokens LM Studio marked as reasoning (or its tags) before the answer
        answer_at: int | None = None
        untyped = reasoning.Split()  # a model whose reasoning LM Studio does not parse
        start = time.perf_counter()
        with errors("generate", self._gone):
            before = self._others()
            stream = lmstudio_sdk.respond_stream_with_raw_fields(self._model, chat, config, raw)
            for fragment in stream:
                now = time.perf_counter()
                n = int(fragment.tokens_count if fragment.tokens_count is not None else 1)
                kind = fragment.reasoning_type or "none"
                if kind != "none":
                    typed += n if answer_at is None else 0
                else:
                    if answer_at is None and fragment.content.strip():
                        answer_at = len(times)
                    answer.append(fragment.content)
                    untyped.add(fragment.content)
                times.extend([now] * n)
            result = stream.result()
            end = time.perf_counter()
            changed = sorted(before ^ self._others())
        s = result.stats
        if s.stop_reason == "modelUnloaded":
            raise EngineLost(EVICTED)
        if typed:
            reasoning_tokens, answered, text = typed, answer_at is not None, "".join(answer)
        else:  # no typed fragments: the tags, if any, are in the text
            reasoning_tokens, answered = untyped.reasoning_tokens, untyped.answered
            text = untyped.answer
        stats = {
            "tokens_per_second": s.tokens_per_second,
            "time_to_first_token_sec": s.time_to_first_token_sec,
            "predicted_tokens_count": s.predicted_tokens_count,
            "prompt_tokens_count": s.prompt_tokens_count,
            "stop_reason": s.stop_reason,
            "num_gpu_layers": s.num_gpu_layers,
            "reasoning_tokens": reasoning_tokens,
            "content_tokens": len(times) - reasoning_tokens,
            "reasoning_parsed_by": "lmstudio" if typed else "sweeper",
            "raw_prediction_fields_sent": raw,
        }
        if changed:  # another model loaded or unloaded while this one was measured
            stats["disturbed"] = f"LM Studio loaded or unloaded {', '.join(changed)} meanwhile"
        return Run.from_timestamps(
            start,
            times,
            int(s.prompt_tokens_count or 0),
            STOP_REASONS.get(s.stop_reason, s.stop_reason),
            end,
            stats,
            text,
            reasoning_tokens,
            answered,
        )

    def unload(self) -> dict[str, Any]:
        if self._model is not None and self._client is not None:
            try:
                self._model.unload()
            except _sdk().LMStudioError:
                pass  # the server may already have dropped it; the next load unloads leftovers
            self._model = self._identifier = None
        return {}

    def close(self) -> None:
        self.unload()
        if self._client is not None:
            with contextlib.suppress(_sdk().LMStudioError, OSError):  # LM Studio may be gone
                self._client.__exit__(None, None, None)
            self._client = None

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(TrialFailure):
            self.close()


def _layers_from_gguf(path: str) -> int | None:
    """The model's layer count, when LM Studio's copy of the GGUF is readable from here."""
    return gguf.block_count(path) if path else None


if TYPE_CHECKING:
    from sweeper.backends import Backend

    _: Backend = LMStudioBackend("google/gemma-3-270m")
