"""What the service's pages say on a first night (in-process, httpx over ASGI, the simulated
fake backend): a study not run yet, one this install cannot run, a failed sweep, empty current
settings, the finalists' side-by-side results and trials' settings as changes; a trial time
limit planned to fit; and a serve started beside a `sweeper/` folder running its sweeps."""

from __future__ import annotations

import json
import re
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from conftest import FAKE_STUDY
from sweeper import config as config_file
from sweeper import plan
from sweeper.cli import cli
from sweeper.service.app import create_app
from sweeper.service.queue import FAILED, RESUMED, RUNNING, STOPPED, Queue, Sweep

URL = "http://127.0.0.1:8765"


@pytest.fixture
def studies(tmp_path: Path) -> Path:
    d = tmp_path / "studies"
    d.mkdir()
    (d / "fake.toml").write_text(FAKE_STUDY)
    return d


@pytest.fixture
def web(studies: Path, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(studies, tmp_path / "state", supervise=False), base_url=URL) as c:
        yield c


def test_a_study_not_run_yet_says_so_with_a_sweep_button(web: TestClient) -> None:
    assert web.get("/api/studies/fake.toml").json()["not_run"] is True
    page = web.get("/studies/fake.toml")
    assert page.status_code == 200
    assert 'id="not-run"' in page.text and 'href="/new?study=fake.toml"' in page.text
    assert "sweeper run" not in page.text


def test_a_study_this_install_cannot_run_says_what_to_install(
    web: TestClient, studies: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = FAKE_STUDY.replace('backend = "fake"', 'backend = "llama.cpp"')
    (studies / "local.toml").write_text(gguf.replace('name = "fake"', 'name = "local"'))
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as on an LM Studio-only install
    rows = {s["file"]: s for s in web.get("/api/studies").json()["studies"]}
    assert rows["fake.toml"]["unavailable"] is None
    why = rows["local.toml"]["unavailable"]
    assert why.startswith("it needs llama-cpp-python, not installed here: run ")
    page = web.get("/").text
    row = page[page.index('data-file="local.toml"') :].split("</tr>")[0]
    assert "this install cannot run it" in row and "Sweep…" not in row
    assert 'href="/new?study=fake.toml">Sweep…' in page


def test_a_failed_sweep_offers_neither_stop_nor_resume(studies: Path, tmp_path: Path) -> None:
    queue = Queue(tmp_path / "state" / "queue.json")
    failed = queue.add(Sweep(str(studies / "fake.toml"), state=FAILED, message="error: it broke"))
    with TestClient(create_app(studies, tmp_path / "state", supervise=False), base_url=URL) as c:
        page = c.get(f"/sweeps/{failed.id}").text
    assert re.search(r'id="stop-form"[^>]* hidden', page)
    assert re.search(r'id="resume-form"[^>]* hidden', page)


def test_empty_current_settings_say_why(
    web: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    data = web.get("/api/new", params={"backend": "lmstudio", "model": "some/model"}).json()
    assert data["current"] == {}
    assert data["current_why"].startswith("LM Studio has no saved load settings for some/model")


def test_results_show_the_finalists_side_by_side_and_settings_as_changes(
    web: TestClient, studies: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    result = CliRunner().invoke(cli, ["run", str(studies / "fake.toml")])
    assert result.exit_code == 0, result.stderr
    short = web.get("/api/studies/fake.toml").json()["workloads"]["short"]
    candidates = short["confirmation"]["candidates"]
    assert candidates
    page = web.get("/studies/fake.toml").text
    for c in candidates:
        low, high = c["completion_pct"][1:]
        assert f"[{low:+.1f}, {high:+.1f}]" in page
        assert c["changes"] and "{" not in c["changes"]
    layout = short["figure"]["layout"]  # the report's figure: tok/s across, as in the report
    assert layout["xaxis"]["title"]["text"] == "decode tok/s (higher is better)"
    front = short["front"]
    assert any(p["changes"] == "your settings" for p in front) or all(
        "(yours: " in p["changes"] or p["changes"] for p in front
    )
    assert '{"context_length"' not in page  # no raw JSON object of settings
    changed = [p["changes"] for p in front if p["changes"] != "your settings"]
    assert all(re.fullmatch(r"[a-z_]+ \S+( \(yours: \S+\))?(, .*)?", c) for c in changed)


def test_the_form_plans_the_trial_time_limit_and_takes_the_first_nights_settings(
    web: TestClient, studies: Path
) -> None:
    form = {
        "name": "slow",
        "backend": "lmstudio",
        "model": "openai/gpt-oss-20b",
        "host": "http://127.0.0.1:1234",  # as LM Studio shows it
        "space.cpu_threads": "1, 2",
        "workloads": ["short", "long"],
        "max_tokens.long": "300",
        "reasoning_effort": "low",
        "assume_tok_s": "2",
        "assume_load_s": "60",
    }
    assert web.post("/api/studies", json=form).status_code == 200
    written = tomllib.loads((studies / "slow.toml").read_text())
    assert written["host"] == "127.0.0.1:1234"
    assert written["sampling"] == {"reasoning_effort": "low"}
    assert [w.get("max_tokens") for w in written["workloads"]] == [None, 300]
    config = config_file.load(studies / "slow.toml")
    full_s = plan.plan(config, plan.speeds(config, [], 2, 60)).full_s  # type: ignore[arg-type]
    assert full_s > 30 * 60  # the default limit would time out every trial
    assert config.budget.trial_timeout_s == pytest.approx(
        max(30, -(-full_s * plan.TIMEOUT_MARGIN // 60)) * 60
    )
    bad = web.post("/api/studies", json=form | {"name": "bad", "host": "127.0.0.1:1234/v1"})
    assert bad.status_code == 400 and bad.json()["error"].startswith(
        "host: '127.0.0.1:1234/v1' is not an address of LM Studio's server"
    )
    own = form | {"name": "own", "trial_timeout": "3h"}
    assert web.post("/api/studies", json=own).status_code == 200
    assert config_file.load(studies / "own.toml").budget.trial_timeout == "3h"


def test_plan_warns_and_run_refuses_a_baseline_over_its_trial_timeout(studies: Path) -> None:
    tight = studies / "tight.toml"
    tight.write_text(FAKE_STUDY.replace("trials = 4", 'trials = 4\ntrial_timeout = "1m"'))
    planned = CliRunner().invoke(cli, ["plan", str(tight), "--assume-tok-s", "0.1"])
    assert planned.exit_code == 0, planned.stderr
    assert re.search(
        r"warning: one full measurement takes \d+ min, more than \[budget\] trial_timeout "
        r'\(1 min\): every trial measured in full would time out; set trial_timeout = "\d+m"',
        planned.stdout,
    )
    ran = CliRunner().invoke(cli, ["run", str(studies / "fake.toml"), "--trials", "1"])
    assert ran.exit_code == 0, ran.stderr
    # the same study, its baseline measured, with a limit it cannot meet
    (studies / "fake.toml").write_text(
        FAKE_STUDY.replace("trials = 4", 'trials = 4\ntrial_timeout = "0.000001s"')
    )
    refused = CliRunner().invoke(cli, ["run", str(studies / "fake.toml")])
    assert refused.exit_code == 2
    assert re.fullmatch(
        r"error: the baseline's full measurement takes \d+ min here, more than trial_timeout "
        rf"\(0 min\); set \[budget\] trial_timeout in {re.escape(str(studies / 'fake.toml'))} "
        r'to "30m"\n',
        refused.stderr,
    )


def test_a_serve_beside_a_sweeper_folder_runs_its_sweeps(
    studies: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The children start as `python -P -m sweeper`: a `sweeper/` folder where the service
    started cannot stand in for the package. One sweep, cut off by the service's end before,
    also shows the resumed note while it runs, and its closing summary when it ends."""
    here = tmp_path / "checkout"
    (here / "sweeper").mkdir(parents=True)
    (here / "sweeper" / "__init__.py").write_text("raise SystemExit('the wrong sweeper')\n")
    monkeypatch.chdir(here)
    slow = FAKE_STUDY.replace('model = "fake-model"', 'model = "fake:slow"')
    (studies / "fake.toml").write_text(slow.replace("trials = 4", "trials = 2"))
    state = tmp_path / "state"
    cut = Queue(state / "queue.json").add(Sweep(str(studies / "fake.toml"), state=RUNNING))
    with TestClient(create_app(studies, state), base_url=URL) as c:
        messages, end = set(), time.monotonic() + 120
        while time.monotonic() < end:
            sweep = c.get(f"/api/sweeps/{cut.id}").json()["sweep"]
            if sweep["state"] == RUNNING:
                messages.add(sweep["message"])
            if sweep["state"] in ("finished", "failed"):
                break
            time.sleep(0.2)
    assert sweep["state"] == "finished", sweep["message"]
    assert messages == {RESUMED}
    assert sweep["message"].startswith("ran 2 trials; ")
    log = Path(sweep["log"]).read_text()
    assert sweep["message"].splitlines()[0] in log
    assert json.loads(json.dumps(sweep))  # the API holds it as plain JSON


def test_an_install_writes_through_a_symlinked_lmstudio_config(
    web: TestClient, studies: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert CliRunner().invoke(cli, ["run", str(studies / "fake.toml")]).exit_code == 0
    folder = tmp_path / ".lmstudio/.internal/user-concrete-model-default-config"
    folder.mkdir(parents=True)
    kept = tmp_path / "dotfiles" / "fake-model.json"
    kept.parent.mkdir()
    kept.write_text(json.dumps({"load": {"fields": [{"key": "llm.load.mine", "value": 1}]}}))
    (folder / "fake-model.json").symlink_to(kept)
    r = web.post("/api/studies/fake.toml/install/short")
    assert r.status_code == 200, r.text
    assert (folder / "fake-model.json").is_symlink()
    keys = {f["key"] for f in json.loads(kept.read_text())["load"]["fields"]}
    assert "llm.load.mine" in keys and len(keys) > 1  # written through the link
    web.post(f"/api/installs/{r.json()['n']}/undo")
    assert (folder / "fake-model.json").is_symlink()
    assert json.loads(kept.read_text())["load"]["fields"] == [{"key": "llm.load.mine", "value": 1}]


@pytest.mark.parametrize(
    ("printed", "state"),
    [
        (
            '{"event": "engine_away", "message": "LM Studio did not come back within 2 s"}',
            "stopped",
        ),
        ('{"event": "trial", "number": 0}', FAILED),
    ],
)
def test_a_sweep_whose_engine_stayed_away_is_resumable_not_failed(
    printed: str, state: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that exits 2 after saying its engine stayed away (what `sweeper run --progress
    json` says: tests/test_engine_loss.py) is stopped with Resume; any other exit 2 failed."""
    from sweeper.service import supervisor

    child = f"import sys; print({printed!r}); sys.exit(2)"
    monkeypatch.setattr(supervisor, "command", lambda sweep: [sys.executable, "-c", child])
    queue = Queue(tmp_path / "queue.json")
    sweep = queue.add(Sweep(str(tmp_path / "lms.toml")))
    runner = supervisor.Supervisor(queue, tmp_path / "logs", lambda event: None)
    (tmp_path / "logs").mkdir()
    runner._run(sweep)
    assert sweep.state == state
    if state == STOPPED:
        assert sweep.message == "LM Studio did not come back within 2 s; Resume once it is back"
