"""The article's PC, simulated (tests/rig), served through LM Studio's protocol and driven by the
real lmstudio SDK: what a load over VRAM does on each OS, what the strict VRAM cap changes, and
a short sweep of the article's own study that ends with a confirmed gain over its Before. The
simulated engine streams at the rig model's pace sped up (said in its version reply)."""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import optuna
import pytest

from lmstudio_server.simulated import MODEL_KEY, SimulatedLMStudioServer
from sweeper import config as studyfile
from sweeper import confirm, fingerprint
from sweeper.backends.lmstudio import LMStudioBackend
from sweeper.errors import LoadError
from sweeper.recommend import for_study
from sweeper.runner import InProcessRunner, worker_spec
from sweeper.settings import LoadSettings
from sweeper.sweep import Sweep
from sweeper.workloads import Sampling, builtin

STUDY = Path(__file__).parent.parent / "studies" / "rtx3060-gpt-oss-20b.toml"
#: the article's After: 100% offload, 12K context, flash attention, batch 256, 6 threads
AFTER = LoadSettings(
    context_length=12288,
    gpu_offload=1.0,
    eval_batch_size=256,
    cpu_threads=6,
    flash_attention=True,
)
PACE = 40.0


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def gpu_layers(rig: str, settings: LoadSettings) -> int:
    """Load through the SDK, generate a few tokens, and return the GPU layers LM Studio said."""
    with (
        SimulatedLMStudioServer(rig, pace=PACE) as srv,
        LMStudioBackend(MODEL_KEY, host=srv.address, n_layers=24) as backend,
    ):
        backend.load(settings)
        run = backend.generate(builtin("short", 4), Sampling())
        return int(run.backend_stats["num_gpu_layers"])


def test_a_load_over_vram_spills_on_windows_fails_on_linux_and_the_cap_lowers_layers() -> None:
    assert gpu_layers("article-pc-windows", AFTER) == 24  # over VRAM: it loads, spilled
    with pytest.raises(LoadError) as failed:
        gpu_layers("article-pc-linux", AFTER)
    assert failed.value.reason == "oom"
    capped = AFTER.replace(gpu_strict_vram_cap=True)
    assert gpu_layers("article-pc-windows", capped) < 24
    assert gpu_layers("article-pc-linux", capped) < 24  # the cap makes it load there too


def short_copy(tmp_path: Path, host: str) -> studyfile.StudyConfig:
    """The article's study as shipped, its budget and caps made small."""
    text = STUDY.read_text(encoding="utf-8")
    small = {
        r"trials = \d+": "trials = 6",
        r"\[measure\]\nrepeats = 3": "[measure]\nrepeats = 1\ndepths = 2\nprobe_tokens = 8",
        r"candidates = 1 ": "candidates = 1\nrounds = 3 ",
        r"max_tokens = 3500": "max_tokens = 16",
        r"max_tokens = 3900": "max_tokens = 24",
    }
    for old, new in small.items():
        assert re.search(old, text), old
        text = re.sub(old, new, text, count=1)
    text = text.replace("model_layers = 24", f'model_layers = 24\nhost = "{host}"', 1)
    path = tmp_path / STUDY.name
    path.write_text(text, encoding="utf-8")
    return studyfile.load(path)


def test_a_short_sweep_of_the_articles_study_confirms_a_gain_over_before(tmp_path: Path) -> None:
    with SimulatedLMStudioServer("article-pc-windows", pace=PACE) as srv:
        config = short_copy(tmp_path, srv.address)
        spec = worker_spec(config)
        engine = LMStudioBackend.engine_version(dict(spec.options))
        assert engine is not None and "simulated" in engine
        assert "simulated" in fingerprint.machine("lmstudio", spec.model, engine)["backend_version"]
        with LMStudioBackend(spec.model, **dict(spec.options)) as backend:
            runner = InProcessRunner(backend, spec)
            rounds = InProcessRunner(backend, dataclasses.replace(spec, repeats=1))
            sweep = Sweep(config, runner, round_runner=rounds)
            study = sweep.open()
            sweep.run(study)
            confirm.confirm_study(study, config, sweep.round_runner)
        recs = for_study(study, config)
    confirmed = [r.recommendation for r in recs.values() if r.recommendation is not None]
    assert any(
        r.status == "confirmed" and r.gain_tok_s_pct is not None and r.gain_tok_s_pct.low > 0
        for r in confirmed
    ), [(r.status, r.point.settings) for r in confirmed]
