"""The LM Studio backend, through the lmstudio Python SDK (pinned 1.5.0).

Each trial unloads sweeper's previous instance, loads a new one with ``load_new_instance``
(never ``model(key, config=...)``, which ignores the config of an already loaded model), reads
back what LM Studio applied, and streams every workload through ``respond_stream``.
"""

from __future__ import annotations

import contextlib
import difflib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sweeper import reasoning
from sweeper.backends import BackendBase, Loaded, LoadProgress, PresetSource, Target, gguf
from sweeper.backends.lmstudio import install as default_config
from sweeper.backends.lmstudio import presets
from sweeper.backends.lmstudio import sdk as lmstudio_sdk
from sweeper.backends.lmstudio.config import from_wire as from_wire
from sweeper.backends.lmstudio.config import preset_fields as preset_fields
from sweeper.backends.lmstudio.config import to_config as to_config
from sweeper.backends.lmstudio.failures import EVICTED, errors
from sweeper.backends.lmstudio.host import find_host as find_host  # the service calls it here
from sweeper.backends.lmstudio.host import parse_host, reachable
from sweeper.backends.lmstudio.host import sdk as _sdk
from sweeper.errors import (
    BackendUnavailable,
    EngineLost,
    GenerationError,
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


class LMStudioBackend(BackendBase):
    name: ClassVar[str] = "lmstudio"
    requires = (("lmstudio", "lmstudio"),)
    supported: ClassVar[frozenset[str]] = frozenset(PARAMS)
    measures_own_memory: ClassVar[bool] = False
    takes_grammar: ClassVar[bool] = False
    names_lmstudio_models: ClassVar[bool] = True
    package: ClassVar[str | None] = "lmstudio"

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
        from sweeper.backends.lmstudio.engine import engine  # it finds LM Studio through here

        return engine(options.get("host"))

    @classmethod
    def parse_host(cls, text: str) -> str:
        return parse_host(text)

    @classmethod
    def models(cls, host: str | None) -> tuple[str, list[str]]:
        where = find_host(host or None)
        return where, sorted(downloaded_models(where))

    @classmethod
    def current_settings(cls, model: str) -> tuple[dict[str, Any], str | None]:
        return default_config.current_settings(model) if model else ({}, None)

    @classmethod
    def render_preset(cls, fmt: str, preset: PresetSource) -> str:
        return presets.RENDER[fmt](preset)

    @classmethod
    def install(cls, preset: PresetSource) -> tuple[Path, Path | None]:
        return default_config.install(preset)

    @classmethod
    def undo_install(cls, target: Path, backup: Path | None) -> None:
        default_config.undo(target, backup)

    @classmethod
    def install_path(cls, model: str) -> Path | None:
        return default_config.install_path(model)

    @classmethod
    def names_engine(cls, version: str) -> bool:
        """LM Studio's is ``LM Studio X; runtimes ...``; studies from before sweeper read it
        hold the SDK package's version there."""
        return version.startswith("LM Studio ")

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

    def load(self, settings: LoadSettings, on_progress: LoadProgress | None = None) -> Loaded:
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
        extras = {
            "identifier": identifier,
            "model": self.model_key,
            "raw_fields_sent": raw,
            "fields": fields,
            # another model resident beside the measured one shares the GPU and the memory
            "others_loaded": others,
        }
        # the layers on the GPU: LM Studio says them with each prediction (Run.gpu_layers)
        return Loaded(applied, None, self.n_layers, {"lmstudio": extras})

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
