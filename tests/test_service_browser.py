"""The whole path in a real browser (Debian's Chromium through Playwright): queue the demo study
(the real model) with a small budget, see its trials arrive live, queue a second one and see it
wait, see a terminal's `sweeper run` wait too, stop the first, restart the service and find both
in the right state with every completed trial, download a preset, install one into LM Studio and
undo it; and no process left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import chromium_path, replaced, tiny_probes
from service_process import Service, alive, ours, study

SHIPPED = Path(__file__).parent.parent / "studies"
#: the trial rows the live page shows as complete
COMPLETE_ROWS = (
    "[...document.querySelectorAll('#trials tr.trial')]"
    ".filter(r => r.cells[1].textContent === 'complete').length"
)
CONFIG = {
    "preset": "",
    "operation": {"fields": [{"key": "llm.prediction.reasoning.effort", "value": "high"}]},
    "load": {"fields": [{"key": "llm.load.someUserSetting", "value": 7}]},
}


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("no chromium on this machine (apt-get install chromium); CI installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


SMALL_DEMO = {
    "max_tokens = 48": "max_tokens = 8",
    "max_tokens = 96": "max_tokens = 12",
    "repeats = 3": "repeats = 1",
    "warmup = 1": "warmup = 0",
}


@pytest.mark.real
def test_the_whole_path_in_a_browser(browser: Any, tmp_path: Path, services: list[Service]) -> None:
    studies = tmp_path / "studies"
    studies.mkdir()
    # the shipped demo made small (its workloads, repeats, warm-up, probes and confirmation):
    # nothing here asserts on a measurement, and the shipped sizes cost a minute more
    demo = replaced((SHIPPED / "demo.toml").read_text(), SMALL_DEMO)
    (studies / "demo.toml").write_text(tiny_probes(demo))
    (studies / "second.toml").write_text(study("second", "fake-model", 3))
    (studies / "third.toml").write_text(study("third", "fake-model", 2))
    (studies / "ready.toml").write_text(study("ready", "fake-model", 4))
    env = os.environ | {"SWEEPER_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    ran = subprocess.run(
        [sys.executable, "-m", "sweeper", "run", str(studies / "ready.toml")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 0, ran.stderr
    lms = tmp_path / ".lmstudio/.internal/user-concrete-model-default-config/fake-model.json"
    lms.parent.mkdir(parents=True)
    lms.write_text(json.dumps(CONFIG))

    service = Service(studies, env)
    services.append(service)
    service.start()
    errors: list[str] = []
    page = browser.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(service.url + "/")
    assert page.locator('#studies tr[data-file="demo.toml"]').count() == 1

    page.goto(service.url + "/new?study=demo.toml")
    page.fill('#choose input[name="trials"]', "6")
    page.click("#choose button")
    assert "no measured baseline yet" in page.inner_text("#plan")
    page.click("#queue button")
    page.wait_for_url("**/sweeps/*")
    first = page.url.rsplit("/", 1)[1]
    page.evaluate("window.notReloaded = true")
    page.wait_for_function(COMPLETE_ROWS + " >= 2", timeout=180_000)
    assert page.evaluate("window.notReloaded") is True  # arrived live, no reload
    page.wait_for_selector("#chart-short .main-svg")  # each workload's points, drawn live
    assert page.inner_text("#state") == "running"

    other = browser.new_page()
    other.goto(service.url + "/new?study=second.toml")
    other.click("#queue button")
    other.wait_for_url("**/sweeps/*")
    second = other.url.rsplit("/", 1)[1]
    assert other.inner_text("#state") == "queued"

    terminal = subprocess.Popen(  # a run started from a terminal meanwhile
        [sys.executable, "-m", "sweeper", "run", str(studies / "third.toml"), "--no-confirm"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert terminal.stderr is not None
    try:
        waiting = terminal.stderr.readline()
        assert waiting.startswith("waiting for another measurement to finish: sweeper run ")
        assert "demo.toml" in waiting
        time.sleep(1)
        assert terminal.poll() is None
    finally:
        terminal.kill()
        terminal.wait(10)
        terminal.stderr.close()

    page.click("#stop")
    page.wait_for_url(f"**/sweeps/{first}")
    page.wait_for_function("document.getElementById('state').textContent === 'stopped'")
    kept = service.api(f"/api/sweeps/{first}")["complete"]
    assert kept >= 2
    other.wait_for_function(
        "['running', 'finished'].includes(document.getElementById('state').textContent)"
    )

    started = service.descendants()
    assert started  # the second sweep runs now, in a child with a worker of its own
    service.stop()
    assert alive(started) == [] and ours(studies) == []
    service.start()
    after = service.api(f"/api/sweeps/{first}")
    assert after["sweep"]["state"] == "stopped" and after["complete"] == kept
    done = service.wait(second, {"finished"})
    assert done["complete"] == 3

    page.goto(service.url + "/studies/ready.toml")
    assert "confirmed" in page.inner_text("#claim-short")
    page.wait_for_selector("#chart-short .main-svg")  # the trials, the front, the baseline
    with page.expect_download() as download:
        page.click('#workload-short a.preset:text("lmstudio")')
    assert download.value.suggested_filename == "ready-short.json"
    page.click("#workload-short button.install")
    page.wait_for_selector("#installs button.undo")
    installed = json.loads(lms.read_text())
    assert installed["operation"] == CONFIG["operation"]
    assert {"key": "llm.load.someUserSetting", "value": 7} in installed["load"]["fields"]
    assert len(installed["load"]["fields"]) > 1
    backups = list(lms.parent.glob("fake-model.json.*.bak"))
    assert len(backups) == 1 and json.loads(backups[0].read_text()) == CONFIG
    page.click("#installs button.undo")
    page.wait_for_selector("#installs td:text('undone')")
    assert json.loads(lms.read_text()) == CONFIG

    started = service.descendants()
    service.stop()
    assert errors == []
    assert alive(started) == [] and ours(studies) == []


def test_ten_tabs_share_one_event_stream_and_all_update(
    browser: Any, tmp_path: Path, services: list[Service]
) -> None:
    """A browser opens at most six connections to a host: with a stream per tab, tabs seven to
    ten would never load. The tabs share one stream, and an event reaches every one of them."""
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "a.toml").write_text(study("a", "fake-model", 1))
    env = os.environ | {"SWEEPER_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    service = Service(studies, env)
    services.append(service)
    service.start()
    context = browser.new_context()
    tabs = [context.new_page() for _ in range(10)]
    for tab in tabs:
        tab.goto(service.url + "/", timeout=15_000)
        tab.wait_for_function("window.sweeperEvents !== undefined")
    queued = httpx.post(service.url + "/api/sweeps", json={"study": "a.toml"}).json()
    row = f'#sweeps tr[data-sweep="{queued["id"]}"]'
    for tab in tabs:  # each tab read the page again when the event came
        tab.wait_for_selector(row, timeout=15_000)
    context.close()
