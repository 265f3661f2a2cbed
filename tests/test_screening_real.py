"""Depth probes on the real model, through llama.cpp in-process and LM Studio's protocol, and a
staged sweep end to end: screened trials, finalists measured in full, the confirmation."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from conftest import REAL_STUDY, WriteStudy, open_backend, tiny_probes
from sweeper import config as studyfile
from sweeper import records, screening
from sweeper.backends import Backend
from sweeper.cli import cli
from sweeper.fronts import points
from sweeper.recommend import expected_completion_s
from sweeper.screening import Reference, ScreenPlan
from sweeper.settings import LoadSettings
from sweeper.storage import open_study
from sweeper.workloads import Sampling, builtin

pytestmark = pytest.mark.real
WORKLOADS = [builtin("short", 16), builtin("long", 24)]


@pytest.fixture(params=["llama.cpp", "lmstudio"])
def backend(request: pytest.FixtureRequest, model_path: str) -> Iterator[Backend]:
    with open_backend(request.param, model_path) as b:
        yield b


def test_probes_reach_the_depths_the_workloads_reach(backend: Backend) -> None:
    backend.load(LoadSettings(context_length=2048, cpu_threads=2))
    prompts = {w.name: backend.generate(w, Sampling()).prompt_tokens for w in WORKLOADS}
    story = backend.generate(builtin("long", 120), Sampling()).text  # real text to fill with
    refs = {"short": Reference(300, story), "long": Reference(600, story)}
    plan = ScreenPlan(depths=4, probe_tokens=8, references=refs)
    s = screening.screen(backend, WORKLOADS, Sampling(), plan)
    assert {w: p.depth for w, p in s.prompts.items()} == prompts  # each real prompt, as is
    depths = [p.depth for p in s.depths]
    assert depths == sorted(depths) and len(depths) == 4
    deepest = prompts["long"] + 600
    assert abs(depths[-1] - deepest) / deepest < 0.25  # text sized by characters per token
    for w, e in s.estimates.items():
        assert e.prompt_tokens == prompts[w] and e.expected_tokens == refs[w].tokens
        assert e.completion_s > e.ttft_s > 0 and e.mean_tok_s > 0
        assert all(p.decode_tok_s > 0 for p in [*s.depths, s.prompts[w]])


def test_a_staged_sweep_on_the_real_model(write_study: WriteStudy) -> None:
    staged = REAL_STUDY.replace("screening = false", "screening = true\npromote = 1")
    path = write_study(tiny_probes(staged))
    result = CliRunner().invoke(cli, ["run", str(path), "--trials", "4"])
    assert result.exit_code == 0, result.stderr
    assert "screened," in result.stdout.splitlines()[0]
    recs = records.load(open_study(studyfile.load(path)))
    screened = [r for r in recs if r.fidelity == "screen" and r.duplicate_of is None]
    assert screened and all(r.estimates["long"].mean_tok_s > 0 for r in screened)
    # each workload's best screened configuration was measured in full: as a finalist, or as
    # the baseline itself when the baseline screened best (then nothing needs promoting)
    full = [r.settings for r in recs if r.fidelity == "full" and r.workloads]
    for w in ("short", "long"):
        best = min(
            points(recs, w, "screen"), key=lambda p: expected_completion_s(p, p.output_tokens)
        )
        assert best.settings in full, w
    doc = json.loads(CliRunner().invoke(cli, ["pareto", str(path), "--json"]).stdout)
    for w in ("short", "long"):
        assert doc[w]["recommended"]["status"] in ("confirmed", "keep")  # confirmed at the end
