"""The LM Studio backend: the real lmstudio SDK over a real socket, against a test server that
speaks LM Studio's protocol and runs the real Gemma 3 270M model."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from conftest import WriteStudy, replaced, tiny_probes
from lmstudio_server import LMSError, LMStudioTestServer, ServerModel
from sweeper import config as studyfile
from sweeper.backends.lmstudio import LMStudioBackend, from_wire, to_config
from sweeper.cli import cli
from sweeper.errors import GenerationError, LoadError
from sweeper.settings import LoadSettings
from sweeper.storage import open_study
from sweeper.workloads import Sampling, builtin

KEY = "google/gemma-3-270m"

STUDY = """
name = "lms"
backend = "lmstudio"
model = "google/gemma-3-270m"
host = "{host}"

[budget]
trials = 3

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
cpu_threads = [1, 2]
flash_attention = [false, true]

[[workloads]]
name = "short"
max_tokens = 6

[[workloads]]
name = "long"
max_tokens = 8
"""


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@pytest.fixture
def server(model_path: str) -> Iterator[LMStudioTestServer]:
    with LMStudioTestServer([ServerModel(KEY, model_path)]) as srv:
        yield srv


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def fields(load: dict) -> dict:
    return {f["key"]: f["value"] for f in load["loadConfigStack"]["layers"][0]["config"]["fields"]}


@pytest.mark.real
def test_a_sweep_sends_exactly_the_intended_keys(
    server: LMStudioTestServer, write_study: WriteStudy
) -> None:
    path = write_study(STUDY.format(host=server.address))
    code, out, err = run_cli("run", str(path), "--no-confirm")
    assert code == 0, err
    assert out.startswith("ran 3 trials; 3 trials, 3 complete")
    study = open_study(studyfile.load(path))
    # settings proposed twice are measured once (the repeat points at the first)
    measured = [t for t in study.get_trials() if "duplicate_of" not in t.user_attrs]
    assert len(server.log.loads) == len(measured) >= 2
    for load, trial in zip(server.log.loads, measured, strict=True):
        settings = trial.user_attrs["settings"]
        sent = fields(load)
        assert sent == {
            "llm.load.contextLength": settings["context_length"],
            "llm.load.llama.flashAttention": settings["flash_attention"],
            "llm.load.llama.cpuThreadPoolSize": settings["cpu_threads"],
        }
        assert "ttlMs" not in load  # no TTL: LM Studio must not unload it mid-trial
        assert load["identifier"].startswith("sweeper-")
        applied = trial.user_attrs["applied"]
        for name in ("context_length", "cpu_threads", "flash_attention"):
            assert applied[name] == settings[name], name
        short = trial.user_attrs["w:short"]
        stats = short["runs"][0]["backend_stats"]
        assert stats["predicted_tokens_count"] == short["runs"][0]["output_tokens"] == 6
        assert stats["tokens_per_second"] > 0 and stats["time_to_first_token_sec"] > 0
        assert trial.user_attrs["peak_rss_mb"] is None  # the engine is the server, not us
    assert server.log.unloads  # each new trial unloaded the previous instance
    assert not server.instances  # and the last one was unloaded at the end


@pytest.mark.real
def test_an_installed_default_never_leaks_into_the_baseline(
    model_path: str, write_study: WriteStudy
) -> None:
    """The baseline leaves flash attention to LM Studio. The first run of it sends no such key
    and records what LM Studio applied; after the user installs a preset that turns it on (the
    model's default config), every later run of the baseline sends the recorded value."""
    text = STUDY.replace("flash_attention = false\n\n[space]", "\n[space]").replace(
        "screening = false", "screening = false\ndrift_check = 1"
    )
    path = write_study(text)
    flash = "llm.load.llama.flashAttention"
    with LMStudioTestServer([ServerModel(KEY, model_path)], default_load={flash: False}) as srv:
        path.write_text(text.format(host=srv.address))
        code, _, err = run_cli("run", str(path), "--no-confirm", "--trials", "1")
        assert code == 0, err
        assert flash not in fields(srv.log.loads[0])  # left to LM Studio, as the user does
        srv.default_load[flash] = True  # `sweeper export --install` of a preset with it on
        code, _, err = run_cli("run", str(path), "--no-confirm", "--trials", "4")
        assert code == 0, err
    study = open_study(studyfile.load(path))
    first = study.trials[0]
    assert first.user_attrs["resolved"] == ["flash_attention"]
    assert first.user_attrs["settings"]["flash_attention"] is False
    checks = [
        t
        for t in study.trials
        if t.user_attrs.get("tag") == "baseline-check"
        and t.state == optuna.trial.TrialState.COMPLETE
    ]
    assert checks
    for t in checks:
        assert t.user_attrs["settings"]["flash_attention"] is False
        assert t.user_attrs["applied"]["flash_attention"] is False  # not the installed True


@pytest.mark.real
def test_the_fingerprint_has_lm_studios_app_and_runtime_versions(
    model_path: str, write_study: WriteStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An LM Studio update can change what runs on the GPU (its bug tracker's #2312): a study's
    machine names the app's version and the runtimes installed, so an update is seen."""
    monkeypatch.setenv("HOME", str(tmp_path))
    runtimes = tmp_path / ".lmstudio/extensions/backends"
    (runtimes / "llama.cpp-linux-x86_64-avx2-1.50.2").mkdir(parents=True)
    (runtimes / "vendor").write_text("a file, not a runtime")
    with LMStudioTestServer([ServerModel(KEY, model_path)], app_version="0.4.21") as srv:
        path = write_study(STUDY.format(host=srv.address))
        code, _, err = run_cli("run", str(path), "--no-confirm", "--trials", "1")
        assert code == 0, err
        machine = open_study(studyfile.load(path)).user_attrs["machine"]
        assert machine["backend_version"] == (
            "LM Studio 0.4.21 (build 1); runtimes llama.cpp-linux-x86_64-avx2-1.50.2"
        )
        srv.app_version = "0.4.22"  # the app updated itself
        code, _, err = run_cli("run", str(path), "--no-confirm", "--trials", "2")
    assert code == 2
    assert "backend_version: 'LM Studio 0.4.21 (build 1); " in err


def test_an_lm_studio_that_does_not_say_its_version_leaves_the_engine_unknown(
    model_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".lmstudio/extensions/backends/llama.cpp-linux-1.2.3").mkdir(parents=True)
    with LMStudioTestServer([ServerModel(KEY, model_path)], app_version=None) as srv:
        assert LMStudioBackend.engine_version({"host": srv.address}) is None
        srv.app_version = "0.4.21"
        assert LMStudioBackend.engine_version({"host": srv.address}) == (
            "LM Studio 0.4.21 (build 1); runtimes llama.cpp-linux-1.2.3"
        )


@pytest.mark.real
def test_the_load_has_no_ttl(server: LMStudioTestServer) -> None:
    with LMStudioBackend(KEY, host=server.address) as backend:
        backend.load(LoadSettings(context_length=512))
    assert "ttlMs" not in server.log.loads[0]  # the SDK's default would be 3600000


def test_unknown_model_lists_close_matches(
    server: LMStudioTestServer, write_study: WriteStudy, tmp_path: Path
) -> None:
    path = write_study(STUDY.format(host=server.address).replace(KEY, "google/gemma-3-27m"))
    code, out, err = run_cli("run", str(path))
    assert code == 2 and out == ""
    assert err == (
        f"error: LM Studio at {server.address} has no model 'google/gemma-3-27m'; "
        f"close matches: {KEY} (download it with `lms get google/gemma-3-27m`)\n"
    )
    assert not (tmp_path / "lms.db").exists()


def test_unreachable_host_is_one_line_before_any_trial(
    write_study: WriteStudy, tmp_path: Path
) -> None:
    path = write_study(STUDY.format(host="127.0.0.1:9"))
    code, _, err = run_cli("run", str(path))
    assert code == 2
    assert err == (
        "error: LM Studio is not reachable at 127.0.0.1:9; start its server with "
        "`lms server start` (or in LM Studio: Developer > Start Server), or give "
        "--host HOST:PORT\n"
    )
    assert not (tmp_path / "lms.db").exists()


@pytest.mark.real
def test_host_option_overrides_the_study_file(
    server: LMStudioTestServer, write_study: WriteStudy
) -> None:
    path = write_study(STUDY.format(host="127.0.0.1:9"))
    code, _, err = run_cli("run", str(path), "--trials", "1", "--host", server.address)
    assert code == 0, err
    assert len(server.log.loads) == 1


@pytest.mark.real
def test_an_out_of_memory_load_is_an_infeasible_trial(
    model_path: str, write_study: WriteStudy
) -> None:
    def oom_with_flash(f: dict) -> LMSError | None:
        if f.get("llm.load.llama.flashAttention"):
            return LMSError("Failed to load model", "ggml: failed to allocate 12 GB: out of memory")
        return None

    with LMStudioTestServer([ServerModel(KEY, model_path)], fail_load=oom_with_flash) as srv:
        path = write_study(
            STUDY.format(host=srv.address).replace(
                "flash_attention = [false, true]", "flash_attention = [true]"
            )
        )
        code, _, err = run_cli("run", str(path), "--trials", "2")
    assert code == 0, err
    trials = open_study(studyfile.load(path)).get_trials()
    assert trials[0].user_attrs.get("failure_reason") is None
    assert trials[1].user_attrs["failure_reason"] == "oom"
    assert "out of memory" in trials[1].user_attrs["failure_detail"]


@pytest.mark.real
def test_a_dropped_socket_is_a_named_failure(model_path: str) -> None:
    with (
        LMStudioTestServer([ServerModel(KEY, model_path)], drop_after_tokens=2) as srv,
        LMStudioBackend(KEY, host=srv.address) as backend,
    ):
        backend.load(LoadSettings(context_length=512))
        with pytest.raises(GenerationError) as err:
            backend.generate(builtin("short", 8), Sampling())
    assert err.value.reason == "disconnected"


@pytest.mark.real
def test_a_missing_model_at_load_time(server: LMStudioTestServer) -> None:
    with (
        LMStudioBackend("nobody/none", host=server.address) as backend,
        pytest.raises(LoadError) as err,
    ):
        backend.load(LoadSettings())
    assert err.value.reason == "load_failed"
    assert "not found" in err.value.detail


@pytest.mark.real
def test_leftover_instances_of_a_killed_worker_are_unloaded(server: LMStudioTestServer) -> None:
    with LMStudioBackend(KEY, host=server.address) as first:
        first.load(LoadSettings(context_length=512))
        first._model = None  # as if the worker died without unloading
        first._client = None
    assert len(server.instances) == 1
    with LMStudioBackend(KEY, host=server.address) as second:
        second.load(LoadSettings(context_length=512))
        assert len(server.instances) == 1


def test_to_config_splits_typed_and_raw_keys() -> None:
    settings = LoadSettings(
        context_length=8192,
        gpu_offload=0.75,
        eval_batch_size=512,
        physical_batch_size=256,
        cpu_threads=6,
        flash_attention=True,
        k_cache_type="q8_0",
        v_cache_type="q8_0",
        mmap=False,
        keep_in_memory=True,
        offload_kv_cache=True,
        cpu_moe_layers=6,
    )
    config, raw = to_config(settings, n_layers=24)
    assert config == {
        "contextLength": 8192,
        "gpu": {"ratio": 0.75},
        "evalBatchSize": 512,
        "flashAttention": True,
        "llamaKCacheQuantizationType": "q8_0",
        "llamaVCacheQuantizationType": "q8_0",
        "tryMmap": False,
        "keepModelInMemory": True,
        "offloadKVCacheToGpu": True,
    }
    assert raw == {
        "llm.load.llama.cpuThreadPoolSize": 6,
        "llm.load.llama.physicalBatchSize": 256,
        "llm.load.numCpuExpertLayersRatio": 0.25,
    }


def test_cpu_moe_layers_needs_the_layer_count() -> None:
    with pytest.raises(LoadError, match="set model_layers"):
        to_config(LoadSettings(cpu_moe_layers=4), n_layers=None)


def test_from_wire_reads_back_canonical_names() -> None:
    wire = {
        "llm.load.contextLength": 4096,
        "llm.load.llama.acceleration.offloadRatio": "max",
        "llm.load.llama.kCacheQuantizationType": {"checked": False, "value": "q8_0"},
        "llm.load.llama.vCacheQuantizationType": {"checked": True, "value": "q4_0"},
        "llm.load.numCpuExpertLayersRatio": 0.5,
        "llm.load.llama.cpuThreadPoolSize": 6,
    }
    assert from_wire(wire, n_layers=24) == {
        "context_length": 4096,
        "gpu_offload": 1.0,
        "k_cache_type": "f16",
        "v_cache_type": "q4_0",
        "cpu_moe_layers": 12,
        "cpu_threads": 6,
    }


QUICK_SMALL = {
    "repeats = 2": "repeats = 1",
    "max_tokens = 32": "max_tokens = 8",
    "max_tokens = 64": "max_tokens = 12",
    "warmup = 1": "warmup = 0",
}


@pytest.mark.real
def test_the_shipped_quick_study_runs_against_the_server(
    server: LMStudioTestServer, tmp_path: Path
) -> None:
    shipped = Path(__file__).parent.parent / "studies" / "lmstudio-quick.toml"
    study = tmp_path / shipped.name  # its log is written next to it, not into the checkout
    text = replaced(shipped.read_text(encoding="utf-8"), QUICK_SMALL)  # its caps made small
    study.write_text(tiny_probes(text), encoding="utf-8")
    storage = f"sqlite:///{tmp_path / 'quick.db'}"
    code, out, err = run_cli(
        "run", str(study), "--trials", "2", "--host", server.address, "--storage", storage
    )
    assert code == 0, err
    assert out.startswith("ran 2 trials; 2 trials, 2 complete")
    sent = [fields(load) for load in server.log.loads]
    assert sent[0] == {
        "llm.load.contextLength": 4096,
        "llm.load.llama.flashAttention": False,
        "llm.load.llama.cpuThreadPoolSize": 4,
    }
    assert "loading" in err  # the load's progress is shown


@pytest.mark.real
def test_a_stopped_trial_unloads_its_model(server: LMStudioTestServer) -> None:
    from sweeper.errors import TrialFailure
    from sweeper.runner import WorkerSpec, run_in_child

    spec = WorkerSpec(
        "lmstudio", KEY, (builtin("long", 4000),), Sampling(), 1, 0, (("host", server.address),)
    )
    with pytest.raises(TrialFailure) as err:
        run_in_child(spec, LoadSettings(context_length=8192), timeout_s=4)
    assert err.value.reason == "timeout"
    assert server.log.unloads == [server.log.loads[0]["identifier"]]
    assert not server.instances


@pytest.mark.real
def test_reasoning_tokens_count_and_are_split(model_path: str) -> None:
    """A protocol test: the server sends the real model's tokens, the first three typed as a
    reasoning block between start and end tag fragments, as LM Studio sends a parsed one."""
    with (
        LMStudioTestServer([ServerModel(KEY, model_path)], reasoning_tokens=3) as srv,
        LMStudioBackend(KEY, host=srv.address) as backend,
    ):
        backend.load(LoadSettings(context_length=512))
        run = backend.generate(builtin("short", 8), Sampling())
        cut = backend.generate(builtin("short", 4), Sampling())  # ends inside the block
    assert run.output_tokens == 8 == run.backend_stats["predicted_tokens_count"]
    # the tags are tokens the model generated too: 1 + 3 + 1 reasoning, 3 answer
    assert (run.reasoning_tokens, run.answer_tokens) == (5, 3)
    assert run.backend_stats["reasoning_parsed_by"] == "lmstudio"
    assert run.answered and run.time_to_answer_s is not None
    assert run.time_to_answer_s > run.ttft_s
    assert not cut.answered and cut.reasoning_tokens == 4 and cut.time_to_answer_s is None


@pytest.mark.real
def test_reasoning_effort_reaches_lm_studio(model_path: str, write_study: WriteStudy) -> None:
    """gpt-oss's effort is a custom field of LM Studio's hub model: sent with every prediction
    as a raw KV field; a model without the field is refused before any trial."""
    gpt_oss = "openai/gpt-oss-20b"
    study = STUDY.replace(KEY, gpt_oss) + '\n[sampling]\nreasoning_effort = "high"\n'
    with LMStudioTestServer(
        [ServerModel(gpt_oss, model_path), ServerModel(KEY, model_path)]
    ) as srv:
        code, _, err = run_cli(
            "run", str(write_study(study.format(host=srv.address))), "--trials", "1"
        )
        assert code == 0, err
        field = "ext.virtualModel.customField.openai.gptOss20b.reasoningEffort"
        assert srv.log.predictions and all(p[field] == "high" for p in srv.log.predictions)
        other = write_study(study.replace(gpt_oss, KEY).format(host=srv.address), name="g.toml")
        code, out, err = run_cli("run", str(other))
    assert (code, out) == (2, "")
    assert err.startswith("error: reasoning_effort: LM Studio takes it only as a custom field")
    assert len(err.splitlines()) == 1


@pytest.mark.real
def test_a_sweep_goes_on_when_every_socket_drops(model_path: str, write_study: WriteStudy) -> None:
    with LMStudioTestServer([ServerModel(KEY, model_path)], drop_after_tokens=2) as srv:
        path = write_study(STUDY.format(host=srv.address))
        code, out, err = run_cli("run", str(path), "--trials", "2")
    assert code == 0, err
    assert "infeasible: disconnected 2" in out
    assert len(srv.log.loads) == 2  # the second trial reconnected and loaded again


@pytest.mark.real
def test_an_mlx_model_takes_only_what_the_mlx_engine_takes(
    model_path: str, write_study: WriteStudy
) -> None:
    """LM Studio runs safetensors models on its MLX engine, which silently ignores every
    llama.cpp load key: a study that sets one is refused before any trial, naming them."""
    mlx = ServerModel(KEY, model_path, format="safetensors")
    with LMStudioTestServer([mlx]) as srv:
        path = write_study(STUDY.format(host=srv.address))
        code, out, err = run_cli("run", str(path))
        assert (code, out) == (2, "")
        assert err == (
            "error: cpu_threads, flash_attention: LM Studio runs google/gemma-3-270m on its MLX "
            "engine, which takes no such setting (llama.cpp engine only); remove them from "
            "the study\n"
        )
        only_context = write_study(
            STUDY.format(host=srv.address)
            .replace("cpu_threads = 2\nflash_attention = false\n", "")
            .replace("cpu_threads = [1, 2]\nflash_attention = [false, true]\n", ""),
            name="ctx.toml",
        )
        code, _, err = run_cli("run", str(only_context), "--trials", "1")
        assert code == 0, err
        assert fields(srv.log.loads[-1]) == {"llm.load.contextLength": 1024}


def test_the_services_form_lists_lmstudios_models(
    server: LMStudioTestServer, tmp_path: Path
) -> None:
    from starlette.testclient import TestClient

    from sweeper.service.app import create_app

    studies = tmp_path / "studies"
    studies.mkdir()
    app = create_app(studies, tmp_path / "state", supervise=False)
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        data = c.get(f"/api/new?models=1&host={server.address}").json()
        assert data["models"] == [KEY] and data["lmstudio"] == server.address
        assert f'<option value="{KEY}">' in c.get(f"/new?models=1&host={server.address}").text
        gone = c.get("/api/new?models=1&host=127.0.0.1:9").json()
        assert gone["models"] == []
        assert gone["models_error"].startswith("LM Studio is not reachable at 127.0.0.1:9")
