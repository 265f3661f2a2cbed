"""The llama-server backend on the real model: the flags it starts the server with are the
settings, what the server applied is read back, a failed load is named, no server outlives its
trial, MoE expert layers are kept on the CPU as asked, and an exported preset starts."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from moe_model import CHATML_TEMPLATE, write_moe_gguf

from conftest import WriteStudy
from sweeper import config as studyfile
from sweeper import export, records
from sweeper.backends import Target
from sweeper.backends.llamaserver import LlamaServerBackend, find_binary, server_args
from sweeper.cli import cli
from sweeper.errors import LoadError
from sweeper.runner import WorkerSpec, run_in_child
from sweeper.settings import LoadSettings
from sweeper.storage import open_study
from sweeper.workloads import Sampling, Workload, builtin

SHORT = builtin("short", 12)
SAME = LoadSettings(context_length=1024, cpu_threads=2, flash_attention=False)

STUDY = """
name = "srv"
backend = "llama-server"
model = "{model}"

[budget]
trials = 3
trial_timeout = "3m"

[measure]
repeats = 1
warmup = 1
screening = false

[baseline]
context_length = 1024
cpu_threads = 2
flash_attention = false

[space]
context_length = [512, 1024]
flash_attention = [false, true]
{extra}
[[workloads]]
name = "short"
max_tokens = 8
"""


def servers() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] == "llama-server"]


@pytest.fixture
def backend(model_path: str) -> Iterator[LlamaServerBackend]:
    with LlamaServerBackend(model_path, find_binary(), n_layers=18) as b:
        yield b
    assert not servers()  # closed: the server is gone


def test_the_flags_are_the_settings() -> None:
    settings = LoadSettings(
        context_length=2048,
        gpu_offload=0.5,
        eval_batch_size=256,
        physical_batch_size=128,
        cpu_threads=2,
        flash_attention=True,
        k_cache_type="q8_0",
        v_cache_type="q8_0",
        mmap=False,
        keep_in_memory=True,
        offload_kv_cache=False,
        cpu_moe_layers=3,
    )
    assert server_args(settings, 18) == [
        *("-c", "2048", "-ngl", "9", "-b", "256", "-ub", "128", "-t", "2", "-fa", "on"),
        *("-ctk", "q8_0", "-ctv", "q8_0", "-nkvo", "--n-cpu-moe", "3", "-lm", "mlock"),
    ]
    assert server_args(LoadSettings(gpu_offload=1.0, mmap=True), None) == [
        *("-ngl", "all", "-lm", "mmap"),
    ]


@pytest.mark.real
def test_what_the_server_applied_is_read_back(backend: LlamaServerBackend) -> None:
    settings = LoadSettings(
        context_length=2048,
        eval_batch_size=256,
        physical_batch_size=128,
        cpu_threads=1,
        flash_attention=True,
        k_cache_type="q8_0",
        v_cache_type="q8_0",
        mmap=False,
    )
    applied = backend.load(settings)
    for name, value in settings.to_dict().items():
        assert applied.settings[name] == value, name
    extras = applied.extras["llama-server"]
    assert extras["build_info"] and not extras["swa_full"]
    assert extras["prompt_format"] == "gemma"  # no template in this GGUF
    run = backend.generate(SHORT, Sampling())
    assert run.output_tokens == SHORT.max_tokens == run.backend_stats["predicted_n"]
    assert run.stop_reason == "max_tokens"
    assert run.prompt_tokens == run.backend_stats["prompt_n"]  # processed in full: honest TTFT
    assert run.decode_tok_s > 0 and run.backend_stats["predicted_per_second"] > 0
    said = backend.unload()
    assert said["memory_breakdown"]["Host"]["model"] > 100  # MiB, llama.cpp's own table


@pytest.mark.real
def test_the_same_tokens_as_in_process(backend: LlamaServerBackend, model_path: str) -> None:
    """The server and llama-cpp-python run the same llama.cpp on the same prompt: greedy
    decoding writes the same text (flash attention set alike: the server's default is "auto",
    llama-cpp-python's off, and it changes the numerics)."""
    from sweeper.backends.llamacpp import LlamaCppBackend

    backend.load(SAME)
    served = backend.generate(SHORT, Sampling())
    with LlamaCppBackend(model_path) as local:
        local.load(SAME)
        here = local.generate(SHORT, Sampling())
    assert served.prompt_tokens == here.prompt_tokens
    assert served.text == here.text


@pytest.mark.real
def test_a_load_that_cannot_allocate_is_oom(backend: LlamaServerBackend) -> None:
    # 146 GB of K/V, past any 2-core machine's memory (100M tokens, 293 GB, took 15-25 s of
    # the kernel's time to refuse)
    with pytest.raises(LoadError) as err:
        backend.load(LoadSettings(context_length=50_000_000))
    assert err.value.reason == "oom"
    assert "failed to allocate" in err.value.detail or "insufficient memory" in err.value.detail
    assert not servers()


@pytest.mark.real
def test_no_server_outlives_a_killed_trial(model_path: str) -> None:
    """A trial stopped at its timeout, mid-generation: the worker and its server are gone."""
    spec = WorkerSpec(
        "llama-server",
        model_path,
        (builtin("long", 4000),),
        Sampling(),
        1,
        0,
        (("binary", find_binary()), ("n_layers", 18)),
    )
    with pytest.raises(Exception) as err:
        run_in_child(spec, LoadSettings(context_length=8192, cpu_threads=1), timeout_s=6)
    assert getattr(err.value, "reason", None) == "timeout"
    deadline = time.monotonic() + 10
    while servers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not servers()


@pytest.mark.real
def test_a_sweep_on_llama_server(write_study: WriteStudy, model_path: str) -> None:
    path = write_study(STUDY.format(model=model_path, extra=""))
    result = CliRunner().invoke(cli, ["run", str(path), "--no-confirm"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("ran 3 trials; 3 trials, 3 complete, 3 feasible")
    recs = records.load(open_study(studyfile.load(path)))
    for r in recs:
        assert r.applied["context_length"] == r.settings["context_length"]
        assert r.applied["flash_attention"] == r.settings["flash_attention"]
        assert r.workloads["short"].runs[0].backend_stats["predicted_n"] == 8
    machine = recs[0].machine or {}
    assert machine["backend"] == "llama-server" and "build" in machine["backend_version"]
    assert not servers()


@pytest.mark.real
def test_moe_expert_layers_stay_on_the_cpu(write_study: WriteStudy, tmp_path: Path) -> None:
    model = write_moe_gguf(tmp_path / "moe.gguf", n_layer=4, n_embd=128, n_ff_exp=128)
    path = write_study(
        STUDY.format(model=model, extra="cpu_moe_layers = [0, 2, 4]\n").replace(
            "trials = 3", "trials = 4"
        )
    )
    result = CliRunner().invoke(cli, ["run", str(path), "--no-confirm"])
    assert result.exit_code == 0, result.stderr
    recs = records.load(open_study(studyfile.load(path)))
    swept = [r for r in recs if "cpu_moe_layers" in r.settings and r.applied]
    assert swept
    for r in swept:  # the server's log names the expert tensors of the first N layers
        assert r.applied["cpu_moe_layers"] == r.settings["cpu_moe_layers"], r.applied
        assert r.mismatch == {}


@pytest.mark.real
def test_the_exported_preset_starts_and_applies_every_setting(
    write_study: WriteStudy, model_path: str, tmp_path: Path
) -> None:
    # a baseline on one thread, a candidate on two: the candidate is recommended (a preset to
    # export) whatever the noise, where two close configurations could leave "keep your settings"
    study = STUDY.format(model=model_path, extra="cpu_threads = [2]")
    path = write_study(study.replace("cpu_threads = 2\n", "cpu_threads = 1\n", 1))
    assert (
        CliRunner().invoke(cli, ["run", str(path), "--trials", "2", "--no-confirm"]).exit_code == 0
    )
    preset = tmp_path / "srv.llama-server.sh"
    result = CliRunner().invoke(
        cli, ["export", str(path), "-w", "short", "--format", "llama-server", "-o", str(preset)]
    )
    assert result.exit_code == 0, result.stderr
    script = preset.read_text()
    argv = shlex.split(script.splitlines()[-1])[1:-1]  # exec ... "$@"
    assert argv[0] == "llama-server" and argv[1:3] == ["-m", model_path]
    settings = json.loads(CliRunner().invoke(cli, ["export", str(path), "-w", "short"]).stdout)[
        "recommendation"
    ]["settings"]
    log = tmp_path / "server.log"
    port = 18000 + int(time.time()) % 1000
    out = log.open("w")
    server = subprocess.Popen(  # the script finds llama-server on PATH, as a user's shell does
        ["/bin/sh", str(preset), "--port", str(port), "-lv", "4"],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={"PATH": f"{Path(find_binary()).parent}{os.pathsep}{os.defpath}"},
    )
    try:
        deadline = time.monotonic() + 60
        text = ""
        # llama-server says "listening on http://..." once its model is loaded and it serves
        while time.monotonic() < deadline and "listening on" not in text:
            time.sleep(0.2)
            text = log.read_text()
        assert "listening on" in text, text
        assert re.search(rf"n_ctx\s+=\s+{settings['context_length']}", text)
        fa = "enabled" if settings.get("flash_attention") else "disabled"
        assert f"Flash Attention {fa}" in text or f"flash_attn            = {fa}" in text
    finally:
        server.terminate()
        server.wait(30)
        out.close()
    assert not servers()
    assert export.SUFFIX["llama-server"] == ".llama-server.sh"


# The real model is made to "reason" by a grammar: a <think> block of fixed text, then the answer.
THINKING = Workload(
    "think",
    "Name a fruit.",
    40,
    grammar='root ::= "<think>" " The user wants one fruit name." "</think>" " Apple" [.]',
)


@pytest.mark.real
def test_a_reasoning_block_is_split_through_the_real_server(
    backend: LlamaServerBackend, model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The split matches what the server streamed: the answer starts with the token that
    starts "Apple"; a cap inside the block leaves no answer. llama-cpp-python in process
    splits its own tokens the same way (its grammar may tokenize the fixed text differently)."""
    from sweeper.backends.llamacpp import LlamaCppBackend

    streamed: list[str] = []
    real_stream = backend._stream

    def spy(path: str, body: dict[str, object]) -> Iterator[dict[str, object]]:
        for chunk in real_stream(path, body):
            streamed.extend(str(chunk["content"]) for _ in chunk.get("tokens") or ())  # type: ignore[union-attr]
            yield chunk

    monkeypatch.setattr(backend, "_stream", spy)
    backend.load(SAME)
    served = backend.generate(THINKING, Sampling())
    first_answer = next(i for i, piece in enumerate(streamed) if piece.startswith("App"))
    assert served.text == "Apple." and served.stop_reason == "eos"
    assert served.reasoning_tokens == first_answer >= 8  # <think>, 7 words, </think>
    assert served.output_tokens == len(streamed) - 1  # the end-of-generation token is no output
    assert served.time_to_answer_s is not None and served.time_to_answer_s > served.ttft_s
    inside = served.reasoning_tokens - 1  # the cap ends the reply inside the block
    cut = backend.generate(replace(THINKING, max_tokens=inside), Sampling())
    assert not cut.answered and cut.reasoning_tokens == inside and cut.time_to_answer_s is None
    backend.unload()
    with LlamaCppBackend(model_path) as local:
        local.load(SAME)
        here = local.generate(THINKING, Sampling())
    assert here.text == "Apple." and here.answered and here.reasoning_tokens >= 8
    assert here.answer_tokens == served.answer_tokens


@pytest.mark.real
def test_reasoning_effort_reaches_the_template(tmp_path: Path) -> None:
    """gpt-oss's template reads ``reasoning_effort``; the server writes it into the prompt."""
    effort = "{{ '<|im_start|>system\\nReasoning: ' + reasoning_effort + '<|im_end|>\\n' }}"
    template = effort + CHATML_TEMPLATE
    model = str(write_moe_gguf(tmp_path / "effort.gguf", chat_template=template))
    target = Target(model, tmp_path, reasoning_effort="high")
    options = LlamaServerBackend.prepare(target)
    with LlamaServerBackend(options["model"], options["binary"]) as b:
        b.load(LoadSettings(context_length=512, cpu_threads=1))
        assert "Reasoning: high" in b._prompt(SHORT, "high")
        run = b.generate(SHORT, Sampling(reasoning_effort="high"))
    assert run.prompt_tokens > len(SHORT.prompt.split())


def test_reasoning_effort_is_refused_for_a_model_that_ignores_it(
    write_study: WriteStudy, model_path: str
) -> None:
    study = STUDY.format(model=model_path, extra="") + '\n[sampling]\nreasoning_effort = "low"\n'
    result = CliRunner().invoke(cli, ["run", str(write_study(study))])
    assert result.exit_code == 2
    assert "reasoning_effort: the chat template of" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
