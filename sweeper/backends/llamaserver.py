"""The llama.cpp that users run: ``llama-server``, started per trial with the trial's settings
as flags, on a free loopback port, one slot (as a desktop user runs it) and ``--fit off``
(sweeper sets the offload itself; llama.cpp's fitting makes a model load, not run fast).

What the server applied is read back from ``/props`` and its log (context, batches, threads,
flash attention, K/V types, load mode, GPU layers, tensor overrides); generations stream from
``/completion`` with the model's chat template applied, and the server's own ``timings`` are
stored beside sweeper's client timing. A server that exits while loading is a trial with a
reason (``oom`` from its log's allocation failures, else ``load_failed``) and its last lines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

from sweeper import reasoning, system
from sweeper.backends import (
    BackendBase,
    Loaded,
    LoadProgress,
    PresetSource,
    Target,
    gguf,
    llamaserver_args,
)
from sweeper.backends.llamacpp import FAMILY_TURNS, LlamaCppBackend
from sweeper.backends.llamaserver_args import FIXED_ARGS, server_args
from sweeper.errors import BackendUnavailable, GenerationError, LoadError, TrialFailure
from sweeper.measurement import Run
from sweeper.settings import LMSTUDIO_ONLY, PARAMS, LoadSettings
from sweeper.workloads import Sampling, Workload

#: The server binary, when the study file does not name one.
ENV_BINARY = "LLAMA_SERVER"
STOP_TYPES = {"eos": "eos", "limit": "max_tokens", "word": "stop_string"}
_OOM = re.compile(r"insufficient memory|failed to allocate|out of memory|cudaMalloc failed")


def find_binary(configured: str | None = None) -> str:
    """The llama-server to run: the study file's, ``$LLAMA_SERVER``, the one `make install`
    built next to this Python, or one on PATH."""
    for candidate in (configured, os.environ.get(ENV_BINARY)):
        if candidate:
            path = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
            if path is None:
                raise BackendUnavailable(f"llama-server binary not found: {candidate}")
            return path
    here = Path(sys.executable).parent / "llama-server"
    found = str(here) if here.exists() else shutil.which("llama-server")
    if found is None:
        raise BackendUnavailable(
            "no llama-server binary: give its path as server_binary in the study file or in "
            f"${ENV_BINARY} (a llama.cpp release has one; in a checkout `make install` builds one)"
        )
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServerBackend(BackendBase):
    name: ClassVar[str] = "llama-server"
    #: heavy processes outside sweeper's tree are noted on the trial (it shares their CPU)
    notes_neighbours: ClassVar[bool] = True
    supported: ClassVar[frozenset[str]] = frozenset(PARAMS) - set(LMSTUDIO_ONLY)
    #: the engine is the server process: the worker's own memory says nothing about it
    measures_own_memory: ClassVar[bool] = False
    #: seconds to wait for the server to load a model
    load_timeout_s: ClassVar[float] = 1800

    def __init__(self, model: str, binary: str, n_layers: int | None = None) -> None:
        self.model_path = model
        self.binary = binary
        self.n_layers = n_layers
        self._server: system.Program | None = None
        self._client: httpx.Client | None = None
        self._log: Path | None = None
        self._prompt_format = "plain"

    @classmethod
    def prepare(cls, target: Target) -> dict[str, Any]:
        model = LlamaCppBackend.resolve_model(target.model, target.base_dir)
        binary = find_binary(target.server_binary)
        gguf.check_reasoning_effort(model, target.reasoning_effort)
        n_layers = target.model_layers or gguf.block_count(model)
        return {"model": model, "binary": binary, "n_layers": n_layers}

    @classmethod
    def model_file(cls, model: str, base_dir: Path) -> str:
        return LlamaCppBackend.model_file(model, base_dir)

    @classmethod
    def render_preset(cls, fmt: str, preset: PresetSource) -> str:
        return llamaserver_args.script(preset)

    @classmethod
    def engine_version(cls, options: dict[str, Any]) -> str | None:
        """The build and its backends (``0.5.0-dev (build 1, commit 0c1e570)``, then what it
        was built with), for the fingerprint."""
        out = system.run_capture([options["binary"], "--version"]) or ""
        lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
        version = next((ln[9:] for ln in lines if ln.startswith("version: ")), None)
        built = next((ln for ln in lines if ln.startswith("built with")), "")
        return f"{version} {built}".strip() if version else None

    def load(self, settings: LoadSettings, on_progress: LoadProgress | None = None) -> Loaded:
        self.unload()
        port = _free_port()
        fd, log = tempfile.mkstemp(prefix="sweeper-llama-server-", suffix=".log")
        os.close(fd)
        self._log = Path(log)
        verbosity = "5" if settings.cpu_moe_layers else "4"  # tensor placement is debug-level
        argv = [
            self.binary,
            "-m",
            self.model_path,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *FIXED_ARGS,
            "--no-webui",
            "-lv",
            verbosity,
            *server_args(settings, self.n_layers),
        ]
        self._server = system.Program(argv, self._log)
        self._server.start()
        # A fresh connection per request: the server may close an idle kept-alive one just as
        # the next request goes out ("Server disconnected without sending a response").
        self._client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            timeout=None,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self._wait_healthy()
        client = self._client
        props = self._call("/props", lambda: client.get("/props").json(), LoadError)
        self._prompt_format = self._format(props)
        return self.applied(settings, props)

    def _call(self, what: str, request: Callable[[], Any], failure: type[TrialFailure]) -> Any:
        """One request to the server, failing with a named reason: the server died, the
        connection dropped, or the reply is not what llama-server sends."""
        try:
            return request()
        except httpx.HTTPError as exc:
            raise self._lost(what, exc, failure) from exc
        except (ValueError, KeyError, TypeError) as exc:
            reason = "load_failed" if failure is LoadError else "generation_failed"
            raise failure(
                reason, f"llama-server {what}: a reply sweeper cannot read: {exc}"
            ) from exc

    def _lost(self, what: str, exc: Exception, failure: type[TrialFailure]) -> TrialFailure:
        code = self._server.exit_code(within_s=1) if self._server else None
        if self._server is not None and code is None:
            return failure("disconnected", f"llama-server {what}: {exc}")
        tail = " | ".join(ln.strip() for ln in self._read_log().splitlines()[-3:] if ln.strip())
        return failure("crashed", f"llama-server exited ({code}) during {what}: {exc}; {tail}")

    def _wait_healthy(self) -> None:
        assert self._server is not None and self._client is not None
        deadline = time.monotonic() + self.load_timeout_s
        while time.monotonic() < deadline:
            if not self._server.alive():
                self._failed_load()
            try:
                if self._client.get("/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet, or still loading (503)
            time.sleep(0.05)
        raise LoadError("timeout", f"llama-server did not load in {self.load_timeout_s:.0f} s")

    def _failed_load(self) -> None:
        lines = [ln for ln in self._read_log().splitlines() if ln.strip()]
        tail = " | ".join(ln.strip() for ln in lines[-4:])
        code = self._server.process.returncode if self._server and self._server.process else None
        oom = next((ln.strip() for ln in reversed(lines) if _OOM.search(ln)), None)
        self.unload()
        if oom:
            raise LoadError("oom", f"llama-server ({oom}); last lines: {tail}")
        raise LoadError("load_failed", f"llama-server exited with code {code}; last lines: {tail}")

    def _read_log(self) -> str:
        try:
            return self._log.read_text(encoding="utf-8", errors="replace") if self._log else ""
        except OSError:
            return ""

    def applied(self, settings: LoadSettings, props: dict[str, Any]) -> Loaded:
        """What the server set up, from /props and its log (llama.cpp's own lines)."""
        log = self._read_log()

        def last(pattern: str) -> str | None:
            found = re.findall(pattern, log)
            return found[-1] if found else None

        out: dict[str, Any] = {}
        n_ctx = props.get("default_generation_settings", {}).get("n_ctx")
        if n_ctx:
            out["context_length"] = int(n_ctx)
        for name, pattern in (
            ("eval_batch_size", r"n_batch\s+=\s+(\d+)"),
            ("physical_batch_size", r"n_ubatch\s+=\s+(\d+)"),
            ("cpu_threads", r"system_info: n_threads = (\d+)"),
        ):
            value = last(pattern)
            if value is not None:
                out[name] = int(value)
        fa = last(r"[Ff]lash [Aa]ttention (enabled|disabled)") or last(r"flash_attn\s+=\s+(\w+)")
        if fa in ("enabled", "disabled"):
            out["flash_attention"] = fa == "enabled"
        kv_types = re.findall(r"K \((\w+)\):[^\n]*V \((\w+)\)", log)
        if kv_types:
            out["k_cache_type"], out["v_cache_type"] = kv_types[-1]
        mode = last(r"load_mode = ([\w+]+)")
        if mode is not None:
            out["mmap"] = "mmap" in mode
            out["keep_in_memory"] = "mlock" in mode
        layers = self.n_layers or 0
        offloaded = last(r"offloaded (\d+)/\d+ layers to GPU")
        gpu_layers = int(offloaded) if offloaded else 0
        out["gpu_offload"] = round(min(gpu_layers, layers) / layers, 4) if layers else 0.0
        overridden = sorted(
            set(re.findall(r"tensor (\S+) \([^)]*\) buffer type overridden to (\w+)", log))
        )
        if settings.cpu_moe_layers is not None:
            experts = {t for t, where in overridden if "_exps" in t and where == "CPU"}
            out["cpu_moe_layers"] = len({t.split(".")[1] for t in experts})
        extras = {
            "build_info": props.get("build_info"),
            "model": Path(self.model_path).name,
            "n_gpu_layers": gpu_layers,
            "overridden_tensors": len(overridden),
            "prompt_format": self._prompt_format,
            "swa_full": "using full-size SWA cache" in log,
            "no_gpu": "no usable GPU found" in log,
        }
        return Loaded(out, gpu_layers, self.n_layers, {"llama-server": extras})

    def _format(self, props: dict[str, Any]) -> str:
        """How prompts are written: the GGUF's chat template through the server, a family's
        turn format (a GGUF without a template: the server would fall back to ChatML, which
        the model was not trained on), or the bare text."""
        if gguf.metadata(self.model_path).get("tokenizer.chat_template"):
            return "chat_template"
        arch = gguf.architecture(self.model_path) or ""
        return next((f for f in FAMILY_TURNS if arch.startswith(f)), "plain")

    def _prompt(self, workload: Workload, reasoning_effort: str | None = None) -> str:
        user = workload.prompt if not workload.system else f"{workload.system}\n\n{workload.prompt}"
        if self._prompt_format == "chat_template":
            assert self._client is not None
            messages = [{"role": "user", "content": workload.prompt}]
            if workload.system:
                messages.insert(0, {"role": "system", "content": workload.system})
            body: dict[str, Any] = {"messages": messages}
            if reasoning_effort:  # the server hands it to the template (checked in prepare)
                body["reasoning_effort"] = reasoning_effort
            client = self._client
            reply = self._call(
                "/apply-template",
                lambda: client.post("/apply-template", json=body).json()["prompt"],
                GenerationError,
            )
            return str(reply)
        if self._prompt_format in FAMILY_TURNS:
            return FAMILY_TURNS[self._prompt_format].format(user=user)
        return user

    def generate(self, workload: Workload, sampling: Sampling, reuse_prefix: bool = False) -> Run:
        if self._client is None or self._server is None or not self._server.alive():
            raise GenerationError("generation_failed", "no model loaded")
        body = {
            "prompt": self._prompt(workload, sampling.reasoning_effort),
            "n_predict": workload.max_tokens,
            "stream": True,
            # a prompt processed again every time (an honest TTFT), unless asked otherwise
            "cache_prompt": reuse_prefix,
            "seed": sampling.seed,
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
            "min_p": sampling.min_p,
            "repeat_penalty": sampling.repeat_penalty,
        }
        if workload.grammar:
            body["grammar"] = workload.grammar
        times: list[float] = []
        pieces: list[str] = []
        final: dict[str, Any] = {}
        start = time.perf_counter()
        try:
            for chunk in self._stream("/completion", body):
                now = time.perf_counter()
                for i, _ in enumerate(chunk.get("tokens") or ()):  # one token a chunk, as a rule
                    times.append(now)
                    pieces.append(chunk.get("content", "") if i == 0 else "")
                if chunk.get("stop"):
                    final = chunk
        except httpx.HTTPError as exc:
            raise self._lost("/completion", exc, GenerationError) from exc
        end = time.perf_counter()
        timings = final.get("timings", {})
        prompt_tokens = int(timings.get("prompt_n", 0)) + int(timings.get("cache_n", 0))
        stats = {k: timings[k] for k in sorted(timings)}
        stats["engine_output_tokens"] = final.get("tokens_predicted")
        stop = STOP_TYPES.get(final.get("stop_type", ""), final.get("stop_type", "unknown"))
        if stop == "eos" and pieces and not pieces[-1]:
            # the end-of-generation token is streamed too, without text: it is no output (as
            # in process, where generation stops when it is sampled)
            times.pop()
            pieces.pop()
        thinking = reasoning.split(pieces)
        return Run.from_timestamps(
            start,
            times,
            prompt_tokens,
            stop,
            end,
            stats,
            thinking.answer,
            thinking.reasoning_tokens,
            thinking.answered,
        )

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        assert self._client is not None
        with self._client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                detail = response.read().decode("utf-8", errors="replace")[:300]
                raise GenerationError(
                    "generation_failed", f"llama-server {response.status_code}: {detail}"
                )
            for line in response.iter_lines():
                if line.startswith("data: ") and line[6:].strip() not in ("", "[DONE]"):
                    yield json.loads(line[6:])

    def unload(self) -> dict[str, Any]:
        """Stop the server (always: no server outlives its trial); what it said on its way
        out (llama.cpp's memory breakdown per device, in MiB)."""
        report: dict[str, Any] = {}
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None:
            self._server.stop(grace_s=5)
            self._server = None
            report = {"memory_breakdown": memory_breakdown(self._read_log())}
        if self._log is not None:
            self._log.unlink(missing_ok=True)
            self._log = None
        return report


def memory_breakdown(log: str) -> dict[str, dict[str, int]]:
    """llama.cpp's table at exit: per device, MiB of model, context and compute buffers."""
    out = {}
    for device, self_mb, model, context, compute in re.findall(
        r"\|\s+- (\S+)\s+\|[^|=]*?(\d+) =\s+(\d+) \+\s+(\d+) \+\s+(\d+)", log
    ):
        out[device] = {
            "total": int(self_mb),
            "model": int(model),
            "context": int(context),
            "compute": int(compute),
        }
    return out


if TYPE_CHECKING:
    from sweeper.backends import Backend

    _: Backend = LlamaServerBackend("model.gguf", "llama-server")
