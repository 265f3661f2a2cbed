"""Every export format round-trips into what its consumer accepts."""

from __future__ import annotations

import inspect
import itertools
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from llama_cpp import Llama
from lmstudio._kv_config import load_config_to_kv_config_stack
from lmstudio._sdk_models import LlmLoadModelConfig

from conftest import FAKE_STUDY, WriteStudy, front_points, run_fake
from lmstudio_server.server import KNOWN_LOAD_KEYS, collapse, llama_kwargs
from sweeper import export
from sweeper.backends import backend_class, llamaserver_args
from sweeper.backends.lmstudio import to_config
from sweeper.cli import cli
from sweeper.errors import SweeperError
from sweeper.files import write_atomic
from sweeper.recommend import recommend
from sweeper.settings import LoadSettings

FULL = LoadSettings(
    context_length=2048,
    gpu_offload=0.5,
    eval_batch_size=256,
    physical_batch_size=128,
    cpu_threads=2,
    flash_attention=True,
    k_cache_type="q8_0",
    v_cache_type="q8_0",
    mmap=False,
    keep_in_memory=False,
    offload_kv_cache=True,
    cpu_moe_layers=3,
)


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> export.Preset:
    """A recommendation of the fake study with every setting, shared: a preset is frozen."""
    d = tmp_path_factory.mktemp("preset")
    (d / "study.toml").write_text(FAKE_STUDY)
    with pytest.MonkeyPatch.context() as m:  # as _sweeper_home does for each test
        m.setenv("SWEEPER_HOME", str(d / "sweeper-home"))
        _, study = run_fake(d / "study.toml", trials=3)
    rec = recommend("short", front_points(study, "short"), 16)
    assert rec is not None
    rec = type(rec)(
        **{
            **rec.__dict__,
            "point": type(rec.point)(**{**rec.point.__dict__, "settings": FULL.to_dict()}),
        }
    )
    return export.Preset("fake", "google/gemma-3-270m", "lmstudio", rec, n_layers=18)


def test_sdk_dict_is_accepted_by_the_sdk_config_types(preset: export.Preset) -> None:
    namespace: dict[str, object] = {}
    exec(export.RENDER["sdk"](preset), namespace)
    config = namespace["config"]
    LlmLoadModelConfig._from_any_dict(config)
    stack = load_config_to_kv_config_stack(config, LlmLoadModelConfig)
    sent = {f.key for layer in stack.layers for f in layer.config.fields}
    typed, raw = to_config(preset.settings, preset.n_layers)
    assert len(sent - {"load.gpuSplitConfig"}) == len(typed)  # nothing silently dropped
    assert set(raw) == {
        "llm.load.llama.physicalBatchSize",
        "llm.load.llama.cpuThreadPoolSize",
        "llm.load.numCpuExpertLayersRatio",
    }
    assert "cpuThreadPoolSize=2" in export.RENDER["sdk"](preset)


def test_lmstudio_json_is_read_by_the_test_servers_parser(
    preset: export.Preset, model_path: str
) -> None:
    doc = json.loads(export.RENDER["lmstudio"](preset))
    assert doc["operation"] == {"fields": []}
    fields = collapse(
        {"layers": [{"layerName": "userModelDefault", "config": {"fields": doc["load"]["fields"]}}]}
    )
    assert set(fields) <= KNOWN_LOAD_KEYS
    assert fields["llm.load.numCpuExpertLayersRatio"] == round(3 / 18, 4)
    kwargs, _ = llama_kwargs(fields, model_path)
    assert (kwargs["n_ctx"], kwargs["n_batch"], kwargs["n_ubatch"], kwargs["n_threads"]) == (
        2048,
        256,
        128,
        2,
    )
    assert kwargs["flash_attn"] is True and kwargs["use_mmap"] is False
    assert kwargs["type_k"] == kwargs["type_v"] == 8  # GGML_TYPE_Q8_0
    assert kwargs["n_gpu_layers"] == 9  # half of 18 layers


def test_model_yaml_carries_the_same_fields(preset: export.Preset) -> None:
    doc = yaml.safe_load(export.RENDER["model-yaml"](preset))
    assert doc["base"] == "google/gemma-3-270m"
    assert (
        doc["config"]["load"]["fields"]
        == json.loads(export.RENDER["lmstudio"](preset))["load"]["fields"]
    )


def test_lms_line_says_what_it_cannot_carry(preset: export.Preset) -> None:
    text = export.RENDER["lms"](preset)
    assert (
        "lms load google/gemma-3-270m --gpu 0.5 --context-length 2048 "
        "--identifier sweeper-short" in text
    )
    assert "`lms load` has no flags for: eval_batch_size=256" in text


#: llama-server flag -> llama_cpp.Llama parameter, from llama.cpp's common/arg.cpp names.
FLAG_TO_LLAMA = {
    "-c": "n_ctx",
    "-ngl": "n_gpu_layers",
    "-b": "n_batch",
    "-ub": "n_ubatch",
    "-t": "n_threads",
    "-fa": "flash_attn",
    "-ctk": "type_k",
    "-ctv": "type_v",
    "-lm": "use_mmap",  # and use_mlock: llama-server's --load-mode
    "-nkvo": "offload_kqv",
}


def test_llama_server_flags_are_llama_cpps_own(preset: export.Preset) -> None:
    args = llamaserver_args.command(preset.settings, "m.gguf", 18)
    llama_params = set(inspect.signature(Llama.__init__).parameters)
    assert set(FLAG_TO_LLAMA.values()) <= llama_params
    assert args[:7] == ["llama-server", "-m", "m.gguf", "-np", "1", "--fit", "off"]
    flags = [a for a in args[7:] if a.startswith("-")]
    for flag in flags:
        assert flag in FLAG_TO_LLAMA or flag == "--n-cpu-moe", flag
    values = dict(itertools.pairwise(args))
    assert (values["-c"], values["-ngl"], values["-b"], values["-ub"], values["-t"]) == (
        "2048",
        "9",
        "256",
        "128",
        "2",
    )
    assert values["-fa"] == "on" and values["-ctk"] == values["-ctv"] == "q8_0"
    assert values["--n-cpu-moe"] == "3"
    assert values["-lm"] == "none"  # no mmap, no mlock
    assert "-nkvo" not in args  # the KV cache offloaded: llama-server's default


def test_json_has_the_numbers_and_spread(preset: export.Preset) -> None:
    doc = json.loads(export.json_doc(preset))
    rec = doc["recommendation"]
    assert rec["settings"] == FULL.to_dict()
    assert set(rec["tok_s"]) >= {"median", "min", "max"}
    assert doc["baseline"]["baseline"] is True


def test_atomic_write_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    write_atomic(path, "one")
    with pytest.raises(SweeperError, match="exists; pass --force"):
        write_atomic(path, "two")
    write_atomic(path, "two", force=True)
    assert path.read_text() == "two"
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left


def test_install_backs_up_the_existing_config(
    preset: export.Preset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    target = (
        tmp_path
        / ".lmstudio/.internal/user-concrete-model-default-config"
        / "google/gemma-3-270m.json"
    )
    lmstudio = backend_class("lmstudio")
    assert lmstudio.install_path(preset.model) == target
    target.parent.mkdir(parents=True)
    target.write_text('{"old": true}')
    written, backup = lmstudio.install(preset)
    assert written == target and backup is not None
    assert json.loads(backup.read_text()) == {"old": True}
    assert json.loads(target.read_text())["load"]["fields"]


def test_export_all_through_the_cli(write_study: WriteStudy, tmp_path: Path) -> None:
    path = write_study()
    run_fake(path, trials=3)
    out = tmp_path / "presets"
    result = CliRunner().invoke(cli, ["export", str(path), "--all", str(out)])
    assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [f"fake-{w}{s}" for w in ("short", "long") for s in export.SUFFIX.values()]
        + ["fake-report.html"]
    )
    again = CliRunner().invoke(cli, ["export", str(path), "--all", str(out)])
    assert again.exit_code == 2 and "exists; pass --force to overwrite it" in again.stderr
    one = CliRunner().invoke(cli, ["export", str(path), "-w", "long", "--format", "lms"])
    assert one.exit_code == 0 and one.stdout.startswith("# sweeper: study fake, workload long")


def test_export_needs_a_workload(write_study: WriteStudy) -> None:
    path = write_study()
    run_fake(path, trials=1)
    result = CliRunner().invoke(cli, ["export", str(path)])
    assert result.exit_code == 2
    assert result.stderr == "error: give --workload NAME (short, long) or --all DIR\n"


def test_the_reasoning_effort_travels_with_the_preset(preset: export.Preset) -> None:
    """A preset measured with a reasoning effort holds only with it: every header names it,
    and the llama-server command sets it."""
    from dataclasses import replace

    p = replace(preset, reasoning_effort="high")
    for name, render in export.RENDER.items():
        if name == "lmstudio":
            continue  # LM Studio's preset JSON has no place for a note (nor for a custom field)
        assert "reasoning effort high" in render(p) or '"reasoning_effort": "high"' in render(p)
    assert "--reasoning-effort high" in export.RENDER["llama-server"](p)
    assert "reasoning effort" not in preset.header()
