"""The bad-input corpus (tests/bad_inputs/): one clear line, exit code 2, nothing touched."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from conftest import run_fake
from sweeper.cli import cli

CORPUS = Path(__file__).parent / "bad_inputs"
GOOD = """name = "corpus"
backend = "fake"
model = "fake-model"
[space]
cpu_threads = [1, 2]
"""


def snapshot(db: Path) -> list[tuple[object, ...]]:
    study = optuna.load_study(study_name="corpus", storage=f"sqlite:///{db}")
    return [(t.number, t.state, t.params, t.values, t.user_attrs) for t in study.trials]


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.toml")))
def test_bad_input(name: str, tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    run_fake(good, trials=2)
    db = tmp_path / "corpus.db"
    before = snapshot(db)

    source = (CORPUS / name).read_text()
    expect = source.splitlines()[0].removeprefix("# expect: ").replace("{dir}", str(tmp_path))
    bad = tmp_path / name
    shutil.copy(CORPUS / name, bad)
    result = CliRunner().invoke(cli, ["run", str(bad)])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert expect in result.stderr
    assert "hunter2" not in result.stderr
    assert snapshot(db) == before
