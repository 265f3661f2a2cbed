"""A whole sweep through the command line on the real model, then a resume."""

from __future__ import annotations

import json
import warnings

import optuna
import pytest
from click.testing import CliRunner

from conftest import REAL_STUDY, WriteStudy
from sweeper import config as studyfile
from sweeper.cli import cli
from sweeper.storage import open_study

pytestmark = pytest.mark.real


def test_run_then_resume_on_the_real_model(write_study: WriteStudy) -> None:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    path = write_study(REAL_STUDY)
    runner = CliRunner()
    # nothing here asserts on the confirmation (test_screening_real and test_readme do)
    first = runner.invoke(cli, ["run", str(path), "--no-confirm"])
    assert first.exit_code == 0, first.stderr
    assert first.stdout.startswith("ran 3 trials; 3 trials, 3 complete")

    second = runner.invoke(cli, ["run", str(path), "--trials", "5", "--no-confirm"])
    assert second.exit_code == 0, second.stderr
    assert second.stdout.startswith("ran 2 trials; 5 trials, 5 complete")

    study = open_study(studyfile.load(path))
    trials = study.get_trials()
    assert len(trials) == 5
    assert trials[0].user_attrs["tag"] == "baseline"
    # the swept setting the baseline leaves out, as llama.cpp applied it: sent from now on
    assert trials[0].user_attrs["settings"] == {
        "context_length": 1024,
        "cpu_threads": 2,
        "flash_attention": False,
    }
    assert trials[0].user_attrs["resolved"] == ["flash_attention"]
    for t in trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        if t.user_attrs.get("failure_reason") or "duplicate_of" in t.user_attrs:
            continue  # a repeat of settings already measured stores a pointer, not a copy
        for w, cap in (("short", 8), ("long", 12)):
            data = t.user_attrs[f"w:{w}"]
            assert len(data["runs"]) == 2 and len(data["warmup"]) == 1
            assert data["output_tokens"]["median"] == cap
            assert data["tok_s"]["min"] <= data["tok_s"]["median"] <= data["tok_s"]["max"]
            assert data["text"]  # the first run's output, for the divergence check
            if t.number == 0:
                assert data["divergence"] == len(data["text"])  # the baseline vs itself
        assert t.user_attrs["applied"]["cpu_threads"] == t.user_attrs["settings"]["cpu_threads"]
        assert t.user_attrs["load_s"] > 0

    pareto = runner.invoke(cli, ["pareto", str(path), "--json"])
    assert pareto.exit_code == 0
    fronts = json.loads(pareto.stdout)
    assert fronts["short"]["front"] and fronts["long"]["front"]
    status = runner.invoke(cli, ["status", str(path)])
    assert status.exit_code == 0
    assert "5 trials, 5 complete" in status.stdout
