"""Enough of LM Studio's websocket protocol for the lmstudio SDK's sync API (SDK 1.5.0).

Greeting probe, auth handshake, listDownloadedModels, listLoaded, loadModel (progress,
identifier, load config), getModelInfo, getLoadConfig (including raw keys it received),
unloadModel, predict (streamed fragments, cancel, final stats) and LM Studio-shaped errors.
Load configs are applied to a real llama-cpp-python model, so timings are real. The mapping
from LM Studio keys to llama.cpp arguments is written here from LM Studio's documentation, on
purpose independent of sweeper's own mapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import llama_cpp
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

GGML = {
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
#: The keys this server applies (and LM Studio's llama.cpp engine knows).
KNOWN_LOAD_KEYS = {
    "llm.load.contextLength",
    "llm.load.llama.acceleration.offloadRatio",
    "load.gpuSplitConfig",
    "llm.load.llama.evalBatchSize",
    "llm.load.llama.physicalBatchSize",
    "llm.load.llama.cpuThreadPoolSize",
    "llm.load.llama.flashAttention",
    "llm.load.llama.kCacheQuantizationType",
    "llm.load.llama.vCacheQuantizationType",
    "llm.load.llama.tryMmap",
    "llm.load.llama.keepModelInMemory",
    "llm.load.offloadKVCacheToGpu",
    "llm.load.numCpuExpertLayersRatio",
    "llm.load.seed",
    "llm.load.llama.useFp16ForKVCache",
    "load.gpuStrictVramCap",
}


class LMSError(Exception):
    """An error the server reports the way LM Studio does (SerializedLMSExtendedError)."""

    def __init__(self, title: str, cause: str = "", code: str = "generic.error") -> None:
        super().__init__(title)
        self.payload = {
            "title": title,
            "cause": cause,
            "rootTitle": title,
            "displayData": {"code": code},
        }


@dataclass
class ServerModel:
    key: str
    path: str
    architecture: str = "gemma3"
    max_context_length: int = 32768
    #: "gguf" (LM Studio's llama.cpp engine) or "safetensors" (its MLX engine)
    format: str = "gguf"


@dataclass
class Instance:
    model: ServerModel
    identifier: str
    reference: str
    fields: list[dict[str, Any]]
    llm: llama_cpp.Llama
    context_length: int
    n_gpu_layers: int
    #: held while a prediction runs; an unload stops it first (closing a model that is
    #: generating crashes llama.cpp)
    busy: threading.Lock = field(default_factory=threading.Lock)
    unloading: threading.Event = field(default_factory=threading.Event)


@dataclass
class ServerLog:
    """What the server saw, for tests to assert on."""

    loads: list[dict[str, Any]] = field(default_factory=list)  # creationParameter of loadModel
    predictions: list[dict[str, Any]] = field(default_factory=list)  # collapsed config stacks
    unloads: list[str] = field(default_factory=list)


class LMStudioTestServer:
    """Start with ``with LMStudioTestServer([...]) as server:``; ``server.address`` is host:port.

    Fault injection for tests: ``fail_load(fields) -> LMSError | None`` fails chosen loads;
    ``drop_after_tokens`` closes the socket mid-generation; ``reasoning_tokens`` makes the
    first N of the model's tokens a reasoning block, sent as LM Studio sends a parsed one: a
    start tag fragment, the reasoning fragments, an end tag fragment (the tags are tokens too,
    within the cap), then the answer. This splits the real model's output at a scripted point:
    a protocol test, not a reasoning model. ``default_load``: the model's default config (what
    an install into LM Studio writes), applied under the fields a load sends.
    """

    def __init__(
        self,
        models: list[ServerModel],
        host: str = "127.0.0.1",
        port: int = 0,
        fail_load: Callable[[dict[str, Any]], LMSError | None] | None = None,
        drop_after_tokens: int | None = None,
        reasoning_tokens: int = 0,
        default_load: dict[str, Any] | None = None,
        app_version: str | None = "0.4.21",
    ) -> None:
        self.models = {m.key: m for m in models}
        #: load fields applied under whatever a client sends, as LM Studio applies the model's
        #: default config (where an install writes) and reports them back as applied
        self.default_load = dict(default_load or {})
        #: what the ``system`` namespace's ``version`` RPC says (an update changes it)
        self.app_version = app_version
        self.host, self.port = host, port
        self.fail_load = fail_load
        self.drop_after_tokens = drop_after_tokens
        self.reasoning_tokens = reasoning_tokens
        self.log = ServerLog()
        self.instances: dict[str, Instance] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> LMStudioTestServer:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("LM Studio test server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(10)
        with self._lock:
            for inst in self.instances.values():
                inst.llm.close()
            self.instances.clear()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(
            self._connection, self.host, self.port, process_request=self._http, max_size=None
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/lmstudio-greeting":
            body = json.dumps({"lmstudio": True}).encode()
            return Response(
                HTTPStatus.OK,
                "OK",
                Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))]),
                body,
            )
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        return None

    async def _connection(self, ws: ServerConnection) -> None:
        namespace = (ws.request.path if ws.request else "/").strip("/")
        try:
            auth = json.loads(await ws.recv())
            if auth.get("authVersion") != 1 or "clientIdentifier" not in auth:
                await ws.send(json.dumps({"success": False, "error": "bad auth message"}))
                return
            await ws.send(json.dumps({"success": True}))
            cancels: dict[int, threading.Event] = {}
            tasks: set[asyncio.Task[None]] = set()
            async for raw in ws:
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "rpcCall":
                    await self._rpc(ws, namespace, msg)
                elif kind == "channelCreate":
                    cancel = cancels[msg["channelId"]] = threading.Event()
                    task = asyncio.create_task(self._channel(ws, namespace, msg, cancel))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif (
                    kind == "channelSend"
                    and msg.get("message", {}).get("type") == "cancel"
                    and msg["channelId"] in cancels
                ):
                    cancels[msg["channelId"]].set()
        except ConnectionClosed:
            pass

    # ---- RPC -------------------------------------------------------------------------------

    async def _rpc(self, ws: ServerConnection, namespace: str, msg: dict[str, Any]) -> None:
        call_id, endpoint, param = msg["callId"], msg["endpoint"], msg.get("parameter")
        handler = {
            ("system", "listDownloadedModels"): lambda p: [
                self._info(m) for m in self.models.values()
            ],
            ("system", "version"): self._version,
            ("llm", "listLoaded"): lambda p: [
                self._instance_info(i) for i in self.instances.values()
            ],
            ("embedding", "listLoaded"): lambda p: [],
            ("llm", "getModelInfo"): lambda p: self._instance_info(self._find(p)),
            ("llm", "getLoadConfig"): lambda p: {"fields": self._find(p).fields},
            ("llm", "unloadModel"): self._unload,
        }.get((namespace, endpoint))
        try:
            if handler is None:
                raise LMSError(
                    f"Unknown endpoint {namespace}/{endpoint}",
                    "the LM Studio test server does not implement it",
                )
            result = await asyncio.to_thread(handler, param)
        except LMSError as exc:
            await ws.send(json.dumps({"type": "rpcError", "callId": call_id, "error": exc.payload}))
            return
        reply: dict[str, Any] = {"type": "rpcResult", "callId": call_id}
        if result is not None:
            reply["result"] = result
        await ws.send(json.dumps(reply))

    def _version(self, param: Any) -> dict[str, Any]:
        if self.app_version is None:  # an LM Studio without the call
            raise LMSError("Unknown endpoint system/version", "not in this LM Studio")
        return {"version": self.app_version, "build": 1}

    def _find(self, param: dict[str, Any]) -> Instance:
        spec = param["specifier"]
        with self._lock:
            for inst in self.instances.values():
                if spec.get("type") == "query" and spec["query"].get("identifier") in (
                    inst.identifier,
                    None,
                ):
                    return inst
                if spec.get("instanceReference") == inst.reference:
                    return inst
        raise LMSError(
            "No model found that fits the query", str(spec), code="generic.noModelMatchingQuery"
        )

    def _unload(self, param: dict[str, Any]) -> None:
        identifier = param["identifier"]
        with self._lock:
            inst = self.instances.pop(identifier, None)
        if inst is None:
            raise LMSError(
                f"No model with identifier {identifier!r} is loaded",
                code="generic.noModelMatchingQuery",
            )
        self.log.unloads.append(identifier)
        inst.unloading.set()
        with inst.busy:
            inst.llm.close()

    def _info(self, m: ServerModel) -> dict[str, Any]:
        return {
            "type": "llm",
            "modelKey": m.key,
            "format": m.format,
            "displayName": m.key,
            "path": m.path,
            "sizeBytes": Path(m.path).stat().st_size,
            "vision": False,
            "trainedForToolUse": False,
            "maxContextLength": m.max_context_length,
            "architecture": m.architecture,
            "paramsString": "270M",
            "quantization": {"name": "Q4_K_M", "bits": 4},
        }

    def _instance_info(self, inst: Instance) -> dict[str, Any]:
        return {
            **self._info(inst.model),
            "identifier": inst.identifier,
            "instanceReference": inst.reference,
            "contextLength": inst.context_length,
        }

    # ---- channels --------------------------------------------------------------------------

    async def _channel(
        self, ws: ServerConnection, namespace: str, msg: dict[str, Any], cancel: threading.Event
    ) -> None:
        channel_id, endpoint = msg["channelId"], msg["endpoint"]
        loop = asyncio.get_running_loop()

        def send(message: dict[str, Any]) -> None:
            frame = json.dumps({"type": "channelSend", "channelId": channel_id, "message": message})
            asyncio.run_coroutine_threadsafe(ws.send(frame), loop).result()

        try:
            if (namespace, endpoint) == ("llm", "loadModel"):
                await asyncio.to_thread(self._load, msg["creationParameter"], send)
            elif (namespace, endpoint) == ("llm", "predict"):
                await asyncio.to_thread(
                    self._predict, ws, msg["creationParameter"], send, cancel, loop
                )
            else:
                raise LMSError(f"Unknown channel endpoint {namespace}/{endpoint}")
            await ws.send(json.dumps({"type": "channelClose", "channelId": channel_id}))
        except LMSError as exc:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(
                    json.dumps(
                        {"type": "channelError", "channelId": channel_id, "error": exc.payload}
                    )
                )
        except ConnectionClosed:
            pass

    def _load(self, param: dict[str, Any], send: Callable[[dict[str, Any]], None]) -> None:
        self.log.loads.append(param)
        model = self.models.get(param["modelKey"])
        if model is None:
            raise LMSError(
                f"Model {param['modelKey']!r} not found",
                "no downloaded model matches",
                code="generic.noModelMatchingQuery",
            )
        fields = {**self.default_load, **collapse(param.get("loadConfigStack", {}))}
        unknown = sorted(set(fields) - KNOWN_LOAD_KEYS)
        if unknown:
            raise LMSError("Failed to load model", f"unknown load config keys {unknown}")
        if self.fail_load and (error := self.fail_load(fields)) is not None:
            raise error
        identifier = param.get("identifier") or model.key
        with self._lock:
            if identifier in self.instances:
                raise LMSError(
                    "Failed to load model",
                    f"an instance with identifier {identifier!r} already exists",
                )
        send({"type": "progress", "progress": 0.0})
        kwargs, n_gpu = llama_kwargs(fields, model.path)
        try:
            llm = llama_cpp.Llama(model.path, verbose=False, **kwargs)
        except ValueError as exc:
            raise LMSError("Failed to load model", f"llama.cpp: {exc}") from exc
        send({"type": "progress", "progress": 1.0})
        applied = dict(fields)
        applied["llm.load.contextLength"] = min(llm.n_ctx(), len(llm.input_ids))
        inst = Instance(
            model,
            identifier,
            uuid.uuid4().hex[:16],
            [{"key": k, "value": v} for k, v in applied.items()],
            llm,
            applied["llm.load.contextLength"],
            n_gpu,
        )
        with self._lock:
            self.instances[identifier] = inst
        send({"type": "success", "info": self._instance_info(inst)})

    def _predict(
        self,
        ws: ServerConnection,
        param: dict[str, Any],
        send: Callable[[dict[str, Any]], None],
        cancel: threading.Event,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        inst = self._find({"specifier": param["modelSpecifier"]})
        with inst.busy:
            if inst.unloading.is_set():
                raise LMSError("Model unloaded", code="generic.noModelMatchingQuery")
            self._generate(inst, ws, param, send, cancel, loop)

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
        max_tokens = unchecked(cfg.get("llm.prediction.maxPredictedTokens"), 256)
        llm = inst.llm
        start = time.perf_counter()
        prompt = gemma_turns(param["history"]["messages"])
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        if len(tokens) + max_tokens > inst.context_length:
            raise LMSError(
                "Context length exceeded", f"{len(tokens)} + {max_tokens} > {inst.context_length}"
            )
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        llm.reset()
        times: list[float] = []
        out: list[int] = []
        stop = "maxPredictedTokensReached"
        self.log.predictions.append(cfg)
        emitted = 0  # tokens sent: the model's and the reasoning tags

        def tag(kind: str, text: str) -> None:
            nonlocal emitted
            times.append(time.perf_counter())
            emitted += 1
            fragment = {"content": text, "tokensCount": 1, "containsDrafted": False}
            send({"type": "fragment", "fragment": {**fragment, "reasoningType": kind}})

        if self.reasoning_tokens:  # as LM Studio parses a <think> block: the tags typed apart
            tag("reasoningStartTag", "<think>")
        for token in llm.generate(
            tokens,
            temp=float(cfg.get("llm.prediction.temperature", 0.8)),
            top_k=int(cfg.get("llm.prediction.topKSampling", 40)),
            top_p=float(unchecked(cfg.get("llm.prediction.topPSampling"), 0.95)),
            min_p=float(unchecked(cfg.get("llm.prediction.minPSampling"), 0.05)),
            repeat_penalty=float(unchecked(cfg.get("llm.prediction.repeatPenalty"), 1.1)),
        ):
            if cancel.is_set():
                stop = "userStopped"
                break
            if inst.unloading.is_set():
                stop = "modelUnloaded"
                break
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                stop = "eosFound"
                break
            if emitted >= max_tokens:
                break
            if self.reasoning_tokens and len(out) == self.reasoning_tokens:
                tag("reasoningEndTag", "</think>")
                if emitted >= max_tokens:
                    break
            times.append(time.perf_counter())
            out.append(token)
            emitted += 1
            text = llm.detokenize([token]).decode("utf-8", errors="replace")
            send(
                {
                    "type": "fragment",
                    "fragment": {
                        "content": text,
                        "tokensCount": 1,
                        "containsDrafted": False,
                        "reasoningType": "reasoning"
                        if len(out) <= self.reasoning_tokens
                        else "none",
                    },
                }
            )
            if self.drop_after_tokens is not None and len(out) >= self.drop_after_tokens:
                asyncio.run_coroutine_threadsafe(ws.close(), loop).result()
                return
            if emitted >= max_tokens:
                break
        self._success(send, inst, cfg, times, start, len(tokens), stop)

    def _success(
        self,
        send: Callable[[dict[str, Any]], None],
        inst: Any,
        cfg: dict[str, Any],
        times: list[float],
        start: float,
        prompt: int,
        stop: str,
    ) -> None:
        """A prediction's closing reply, with the statistics LM Studio computes: one token a
        time in ``times`` (when each was sent), ``start`` when the request arrived."""
        n = len(times)
        span = times[-1] - times[0] if n > 1 else 0.0
        stats = {
            "stopReason": stop,
            "predictedTokensCount": n,
            "promptTokensCount": prompt,
            "totalTokensCount": n + prompt,
            "timeToFirstTokenSec": (times[0] - start) if times else 0.0,
            "tokensPerSecond": (n - 1) / span if span > 0 else 0.0,
            "numGpuLayers": float(inst.n_gpu_layers),
        }
        send(
            {
                "type": "success",
                "stats": stats,
                "modelInfo": self._info(inst.model),
                "loadModelConfig": {"fields": inst.fields},
                "predictionConfig": {"fields": [{"key": k, "value": v} for k, v in cfg.items()]},
            }
        )


def collapse(stack: dict[str, Any]) -> dict[str, Any]:
    """A KV config stack collapsed into one dict; later layers win (lmstudio-js collapseKVStack)."""
    out: dict[str, Any] = {}
    for layer in stack.get("layers", []):
        for f in layer.get("config", {}).get("fields", []):
            out[f["key"]] = f["value"]
    return out


def unchecked(value: Any, default: Any) -> Any:
    """The value of a checkbox field ({"checked": bool, "value": x}) or of a plain one."""
    if isinstance(value, dict) and "checked" in value:
        return value["value"] if value["checked"] else default
    return default if value is None else value


def llama_kwargs(fields: dict[str, Any], path: str) -> tuple[dict[str, Any], int]:
    """LM Studio load keys -> llama-cpp-python arguments (LM Studio's own meaning of each)."""
    kw: dict[str, Any] = {"n_ctx": int(fields.get("llm.load.contextLength", 4096))}
    ratio = fields.get("llm.load.llama.acceleration.offloadRatio", "max")
    meta = llama_cpp.Llama(path, vocab_only=True, verbose=False).metadata
    layers = int(meta.get(f"{meta.get('general.architecture')}.block_count", 0))
    n_gpu = layers if ratio == "max" else 0 if ratio == "off" else round(float(ratio) * layers)
    kw["n_gpu_layers"] = n_gpu
    simple = {
        "llm.load.llama.evalBatchSize": "n_batch",
        "llm.load.llama.physicalBatchSize": "n_ubatch",
        "llm.load.llama.flashAttention": "flash_attn",
        "llm.load.llama.tryMmap": "use_mmap",
        "llm.load.llama.keepModelInMemory": "use_mlock",
        "llm.load.offloadKVCacheToGpu": "offload_kqv",
    }
    for key, arg in simple.items():
        if key in fields:
            kw[arg] = fields[key]
    if "llm.load.llama.cpuThreadPoolSize" in fields:
        kw["n_threads"] = kw["n_threads_batch"] = int(fields["llm.load.llama.cpuThreadPoolSize"])
    for key, arg in (
        ("llm.load.llama.kCacheQuantizationType", "type_k"),
        ("llm.load.llama.vCacheQuantizationType", "type_v"),
    ):
        value = unchecked(fields.get(key), None)
        if value is not None:
            kw[arg] = GGML[value]
    seed = unchecked(fields.get("llm.load.seed"), None)
    if seed is not None:
        kw["seed"] = int(seed)
    return kw, n_gpu if llama_cpp.llama_supports_gpu_offload() else 0


def gemma_turns(messages: list[dict[str, Any]]) -> str:
    """Chat history in Gemma's turn format (the GGUF carries no chat template)."""
    text = ""
    system = ""
    for m in messages:
        content = (
            "".join(p.get("text", "") for p in m["content"])
            if isinstance(m["content"], list)
            else str(m["content"])
        )
        if m["role"] == "system":
            system = content + "\n\n"
        else:
            role = "model" if m["role"] == "assistant" else "user"
            text += (
                f"<start_of_turn>{role}\n{system if role == 'user' else ''}{content}<end_of_turn>\n"
            )
            system = ""
    return text + "<start_of_turn>model\n"
