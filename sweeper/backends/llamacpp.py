"""The llama.cpp backend, through llama-cpp-python, in the current process.

sweeper runs it inside a fresh child process per trial (``sweeper.runner``), so a crash or an
out-of-memory kill costs one trial, and memory figures are clean.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

from sweeper import distribution, reasoning
from sweeper.backends import BackendBase, Loaded, LoadProgress, Target, gguf
from sweeper.errors import BackendUnavailable, GenerationError, LoadError, SweeperError
from sweeper.measurement import Run
from sweeper.settings import LMSTUDIO_ONLY, PARAMS, LoadSettings
from sweeper.workloads import Sampling, Workload

if TYPE_CHECKING:
    import llama_cpp

#: GGML type ids (ggml.h) for the canonical cache type names.
GGML_TYPES = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "iq4_nl": 20,
    "bf16": 30,
}
GGML_NAMES = {v: k for k, v in GGML_TYPES.items()}

#: Turn formats for model families whose GGUF may carry no chat template. Without one,
#: llama-cpp-python falls back to a llama-2 format that makes Gemma stop at once.
FAMILY_TURNS = {
    "gemma": ("<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n"),
}

PACKAGE_PREFIX = "package:"


def _llama_cpp() -> Any:
    try:
        return importlib.import_module("llama_cpp")
    except ImportError as exc:
        raise BackendUnavailable(
            "llama-cpp-python is not installed; " + distribution.install_hint("llama-cpp-python")
        ) from exc


@contextlib.contextmanager
def _errors(stage: str) -> Iterator[None]:
    """llama-cpp-python's exceptions as sweeper's, in one place."""
    try:
        yield
    except (ValueError, RuntimeError) as exc:
        if stage == "load":
            raise LoadError("load_failed", f"llama.cpp: {exc}") from exc
        raise GenerationError("generation_failed", f"llama.cpp: {exc}") from exc


class LlamaCppBackend(BackendBase):
    name: ClassVar[str] = "llama.cpp"
    requires = (("llama_cpp", "llama-cpp-python"),)
    #: heavy processes outside sweeper's tree are noted on the trial (it shares their CPU)
    notes_neighbours: ClassVar[bool] = True
    package: ClassVar[str | None] = "llama-cpp-python"
    supported: ClassVar[frozenset[str]] = frozenset(PARAMS) - {"cpu_moe_layers", *LMSTUDIO_ONLY}
    unsupported_why: ClassVar[Mapping[str, str]] = {
        **LMSTUDIO_ONLY,
        "cpu_moe_layers": "llama-cpp-python 0.3.36 does not expose llama.cpp's tensor buffer "
        "overrides (--n-cpu-moe); use the lmstudio backend or llama-server's --n-cpu-moe",
    }
    #: In a worker process stderr goes to the trial's log, which names failures such as
    #: "failed to allocate buffer"; llama-cpp-python silences it unless verbose.
    worker_options: ClassVar[Mapping[str, Any]] = {"verbose": True}

    def __init__(self, model: str, verbose: bool = False) -> None:
        self.model_path = model
        self.verbose = verbose
        self._llm: llama_cpp.Llama | None = None
        self._vocab: Any = None
        self._prompt_format = "plain"

    @classmethod
    def prepare(cls, target: Target) -> dict[str, Any]:
        """Resolve the model (a .gguf path, or ``package:NAME`` for a PyPI model package), and
        check that llama-cpp-python is there before any trial exists."""
        _llama_cpp()
        model = cls.resolve_model(target.model, target.base_dir)
        gguf.check_reasoning_effort(model, target.reasoning_effort)
        return {"model": model}

    @staticmethod
    def resolve_model(model: str, base_dir: Path) -> str:
        if model.startswith(PACKAGE_PREFIX):
            package = model[len(PACKAGE_PREFIX) :].replace("-", "_")
            try:
                return str(importlib.import_module(package).assemble())
            except ImportError:
                raise BackendUnavailable(
                    f"model package {package!r} is not installed; "
                    + distribution.install_hint(model[len(PACKAGE_PREFIX) :])
                ) from None
        path = (base_dir / model).expanduser()
        if not path.is_file():
            raise BackendUnavailable(
                f"model file not found: {path}; set `model` in the study file to a .gguf path "
                f"or to {PACKAGE_PREFIX}<pypi package>"
            )
        return str(path.resolve())

    @classmethod
    def model_file(cls, model: str, base_dir: Path) -> str:
        try:
            return cls.resolve_model(model, base_dir)
        except SweeperError:
            return model

    def load(self, settings: LoadSettings, on_progress: LoadProgress | None = None) -> Loaded:
        lc = _llama_cpp()
        self.unload()
        kwargs = self._kwargs(settings)
        with _errors("load"):
            self._llm = lc.Llama(self.model_path, verbose=self.verbose, **kwargs)
        self._vocab = lc.llama_model_get_vocab(self._llm.model)
        self._prompt_format = self._detect_prompt_format()
        return self.applied()

    def _kwargs(self, settings: LoadSettings) -> dict[str, Any]:
        """Canonical settings as ``Llama(...)`` arguments (each Param names its own)."""
        kw: dict[str, Any] = {}
        for name, value in settings.to_dict().items():
            if name == "gpu_offload":
                layers = gguf.block_count(self.model_path) or 0
                value = -1 if value >= 1 else round(value * layers)
            elif name in ("k_cache_type", "v_cache_type"):
                value = GGML_TYPES[value]
            kw[PARAMS[name].llamacpp] = value
        if "n_threads" in kw:
            kw["n_threads_batch"] = kw["n_threads"]  # prompt processing uses the same threads
        # llama.cpp's own tools (llama-server, llama-bench) keep a sliding-window cache only as
        # large as the window; llama-cpp-python's context default keeps it full size, which
        # made Gemma 3 decode 21% slower at a depth of 3,000 tokens than llama-bench does
        kw["swa_full"] = False
        return kw

    def applied(self) -> Loaded:
        """What llama.cpp actually set up, in canonical names (plus llama.cpp extras)."""
        lc = _llama_cpp()
        llm = self._require()
        ctx, cp, mp = llm.ctx, llm.context_params, llm.model_params
        layers = gguf.block_count(self.model_path) or 0
        gpu = bool(lc.llama_supports_gpu_offload())
        n_gpu = min(mp.n_gpu_layers if mp.n_gpu_layers >= 0 else layers, layers) if gpu else 0
        applied = {
            "context_length": self._usable_context(),
            "gpu_offload": round(n_gpu / layers, 4) if layers else 0.0,
            "eval_batch_size": int(lc.llama_n_batch(ctx)),
            "physical_batch_size": int(lc.llama_n_ubatch(ctx)),
            "cpu_threads": int(cp.n_threads),
            "flash_attention": cp.flash_attn_type == lc.LLAMA_FLASH_ATTN_TYPE_ENABLED,
            "k_cache_type": GGML_NAMES.get(cp.type_k, str(cp.type_k)),
            "v_cache_type": GGML_NAMES.get(cp.type_v, str(cp.type_v)),
            "mmap": mp.load_mode in (lc.LLAMA_LOAD_MODE_MMAP, lc.LLAMA_LOAD_MODE_MMAP_MLOCK),
            "keep_in_memory": mp.load_mode
            in (lc.LLAMA_LOAD_MODE_MLOCK, lc.LLAMA_LOAD_MODE_MMAP_MLOCK),
            "offload_kv_cache": bool(cp.offload_kqv),
        }
        extras = {
            "n_gpu_layers": n_gpu,
            "n_layers": layers,
            "gpu_build": gpu,
            "n_threads_batch": int(cp.n_threads_batch),
            "swa_full": bool(cp.swa_full),
            "prompt_format": self._prompt_format,
            "model": Path(self.model_path).name,
            "model_desc": llm._model.desc(),
            "llama_cpp_python": lc.__version__,
        }
        return Loaded(applied, n_gpu, layers or None, {"llama.cpp": extras})

    def _detect_prompt_format(self) -> str:
        meta = self._require().metadata
        if meta.get("tokenizer.chat_template"):
            return "chat_template"
        arch = meta.get("general.architecture", "")
        for family in FAMILY_TURNS:
            if arch.startswith(family):
                return family
        return "plain"

    def format_prompt(self, workload: Workload, reasoning_effort: str | None = None) -> str:
        """The workload as the model expects it: its chat template (given the reasoning
        effort, where the template reads one), a family turn format, or the bare text when
        neither is known."""
        user = workload.prompt if not workload.system else f"{workload.system}\n\n{workload.prompt}"
        if self._prompt_format == "chat_template":
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            llm = self._require()
            messages = [{"role": "user", "content": workload.prompt}]
            if workload.system:
                messages.insert(0, {"role": "system", "content": workload.system})
            formatter = Jinja2ChatFormatter(
                template=llm.metadata["tokenizer.chat_template"],
                eos_token=llm.detokenize([llm.token_eos()]).decode(errors="replace"),
                bos_token=llm.detokenize([llm.token_bos()]).decode(errors="replace"),
            )
            extra: dict[str, Any] = (
                {"reasoning_effort": reasoning_effort} if reasoning_effort else {}
            )
            return str(formatter(messages=cast(Any, messages), **extra).prompt)
        if self._prompt_format in FAMILY_TURNS:
            return FAMILY_TURNS[self._prompt_format].format(user=user)
        return user

    def generate(self, workload: Workload, sampling: Sampling, reuse_prefix: bool = False) -> Run:
        lc = _llama_cpp()
        llm = self._require()
        start = time.perf_counter()
        tokens = llm.tokenize(
            self.format_prompt(workload, sampling.reasoning_effort).encode("utf-8"),
            add_bos=True,
            special=True,
        )
        n_ctx = self._usable_context()
        if len(tokens) + workload.max_tokens > n_ctx:
            raise GenerationError(
                "context_too_small",
                f"{workload.name}: {len(tokens)} prompt + {workload.max_tokens} output tokens "
                f"> context_length {n_ctx}",
            )
        # A fresh KV cache every run: llama-cpp-python would otherwise reuse the cached prompt
        # prefix and report a time to first token without prompt processing (wanted only
        # when asked: it matches the longest cached prefix itself).
        if not reuse_prefix:
            llm.reset()  # type: ignore[no-untyped-call]
        llm.set_seed(sampling.seed)
        lc.llama_perf_context_reset(llm.ctx)
        times: list[float] = []
        out: list[int] = []
        stop = "max_tokens"
        # a reasoning model's markers are special tokens: they are only found written out
        thinking = reasoning.Split()
        with _errors("generate"):
            grammar = (
                lc.LlamaGrammar.from_string(workload.grammar, verbose=False)
                if (workload.grammar)
                else None
            )
            for token in llm.generate(
                tokens,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                min_p=sampling.min_p,
                temp=sampling.temperature,
                repeat_penalty=sampling.repeat_penalty,
                reset=True,
                grammar=grammar,
            ):
                if lc.llama_vocab_is_eog(self._vocab, token):
                    stop = "eos"
                    break
                times.append(time.perf_counter())
                out.append(token)
                thinking.add(llm.detokenize([token], special=True).decode("utf-8", "ignore"))
                if len(times) >= workload.max_tokens:
                    break
        end = time.perf_counter()
        perf = lc.llama_perf_context(llm.ctx)
        # llama.cpp decodes every output token but the last one when the cap ends the run
        # (its logits are never needed); an end-of-generation token was decoded-for.
        engine_tokens = perf.n_eval + (1 if stop == "max_tokens" else 0)
        stats = {
            "n_eval": perf.n_eval,
            "n_p_eval": perf.n_p_eval,
            "t_eval_ms": perf.t_eval_ms,
            "t_p_eval_ms": perf.t_p_eval_ms,
            "engine_output_tokens": engine_tokens if times else 0,
            "engine_decode_tok_s": perf.n_eval / perf.t_eval_ms * 1000 if perf.t_eval_ms else 0.0,
        }
        answer = out[thinking.reasoning_tokens :] if thinking.answered else []
        text = llm.detokenize(answer).decode("utf-8", errors="replace")
        return Run.from_timestamps(
            start,
            times,
            len(tokens),
            stop,
            end,
            stats,
            text,
            thinking.reasoning_tokens,
            thinking.answered,
        )

    def _usable_context(self) -> int:
        # llama.cpp pads the context (to 256), but llama-cpp-python sizes its token buffer to
        # the requested n_ctx; the smaller of the two is what a generation can use.
        llm = self._require()
        return min(int(llm.n_ctx()), len(llm.input_ids))

    def _require(self) -> llama_cpp.Llama:
        if self._llm is None:
            raise GenerationError("generation_failed", "no model loaded")
        return self._llm

    def unload(self) -> dict[str, Any]:
        if self._llm is not None:
            self._llm.close()
            self._llm = None
        return {}


if TYPE_CHECKING:
    from sweeper.backends import Backend

    _: Backend = LlamaCppBackend("model.gguf")
