"""An LM Studio that goes away while sweeper measures through it: the LM Studio test server in its
own process, killed (as LM Studio quits or crashes) and started again on the same port, during a
trial, between trials, during the rounds of a confirmation or a comparison, and past the wait's
bound; another SDK client loading a model during a measurement."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from conftest import WriteStudy
from lmstudio_server import LMStudioTestServer, ServerModel
from lmstudio_server.process import ServerProcess
from sweeper import compare, outage
from sweeper import config as studyfile
from sweeper.backends.lmstudio import LMStudioBackend
from sweeper.backends.lmstudio import sdk as lmstudio_sdk
from sweeper.measure import measure_workloads
from sweeper.runner import worker_spec
from sweeper.settings import LoadSettings
from sweeper.storage import open_study
from sweeper.workloads import Sampling, builtin

pytestmark = pytest.mark.real
KEY = "google/gemma-3-270m"
STUDY = """
name = "lms"
backend = "lmstudio"
model = "google/gemma-3-270m"
host = "{host}"

[budget]
trials = {trials}
trial_timeout = "2m"

[measure]
repeats = 1
warmup = 0
screening = false

[baseline]
context_length = 512
cpu_threads = 2

[space]
context_length = [256, 512]
cpu_threads = [1, 2]

[[workloads]]
name = "short"
max_tokens = 4

[[workloads]]
name = "long"
max_tokens = 6
"""


@pytest.fixture
def lms() -> Iterator[ServerProcess]:
    with ServerProcess() as server:
        yield server


@pytest.fixture
def sweeps() -> Iterator[Callable[..., Sweeper]]:
    started: list[Sweeper] = []

    def start(path: Path, *args: str) -> Sweeper:
        started.append(Sweeper(path, *args))
        return started[-1]

    yield start
    for sweep in started:
        sweep.close()


class Sweeper:
    """``sweeper run --progress json`` in its own process, read event by event."""

    def __init__(self, path: Path, *args: str) -> None:
        self.err = path.with_suffix(".stderr")
        with open(self.err, "w", encoding="utf-8") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sweeper", "run", str(path), "--progress", "json", *args],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.events: list[dict[str, Any]] = []

    def until(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if not line.startswith("{"):  # the summary at the end
                continue
            event = json.loads(line)
            self.events.append(event)
            if wanted(event):
                return event
        raise AssertionError(f"sweeper ended first: {self.stderr()}")

    def wait(self) -> int:
        assert self.process.stdout is not None
        self.events += [json.loads(ln) for ln in self.process.stdout if ln.startswith("{")]
        self.process.stdout.close()
        return self.process.wait(120)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def stderr(self) -> str:
        return self.err.read_text(encoding="utf-8")


def trial(e: dict[str, Any]) -> bool:
    return e["event"] == "trial"


def waiting(e: dict[str, Any]) -> bool:
    return e.get("kind") == "waiting"


def stored(path: Path) -> list[optuna.trial.FrozenTrial]:
    return open_study(studyfile.load(path)).get_trials()


def test_a_sweep_rides_out_lm_studio_killed_during_and_between_trials(
    lms: ServerProcess, write_study: WriteStudy, sweeps: Callable[..., Sweeper]
) -> None:
    # 5 trials of a space of 4: each configuration queued (no proposal answered from storage)
    path = write_study(STUDY.format(host=lms.address, trials=5))
    sweep = sweeps(path, "--no-confirm", "--engine-wait", "2m")
    sweep.until(trial)  # the baseline
    sweep.until(lambda e: e.get("kind") == "run")  # trial 1 loaded and measuring
    lms.kill()
    event = sweep.until(waiting)
    assert event["engine"] == "LM Studio" and re.fullmatch(r"\d\d:\d\d", event["since"])
    lms.start()
    assert sweep.until(trial)["failure"] is None  # the trial in flight, measured again
    lms.kill()  # between trials: the next one cannot reach it
    sweep.until(waiting)
    lms.start()
    assert sweep.wait() == 0, sweep.stderr()
    assert sum(waiting(e) for e in sweep.events) == 2
    trials = stored(path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert [t.user_attrs.get("failure_reason") for t in trials] == [None] * 5


def test_past_the_wait_one_line_and_the_same_command_resumes(
    lms: ServerProcess, write_study: WriteStudy, sweeps: Callable[..., Sweeper]
) -> None:
    path = write_study(STUDY.format(host=lms.address, trials=5))
    sweep = sweeps(path, "--no-confirm", "--engine-wait", "2s")
    sweep.until(trial)
    lms.kill()
    assert sweep.wait() == 2
    last = sweep.stderr().splitlines()[-1]
    assert last.startswith("error: LM Studio did not come back within 2 s (waiting since ")
    assert last.endswith(
        f"1 complete trials are stored in sqlite:///{path.parent / 'lms.db'}; "
        "run the same command to resume"
    )
    assert last.count("run the same command") == 1 and "start LM Studio again" in last
    assert "Traceback" not in sweep.stderr()
    # what tells the service to show the sweep as resumable, not failed
    (away,) = [e["message"] for e in sweep.events if e["event"] == "engine_away"]
    assert away.startswith("LM Studio did not come back within 2 s")
    trials = stored(path)
    assert [t.state for t in trials[:2]] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs["failure_reason"] == "engine_lost"
    assert TrialState.COMPLETE not in [t.state for t in trials[2:]]

    lms.start()
    again = sweeps(path, "--no-confirm")
    assert again.wait() == 0, again.stderr()
    trials = stored(path)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 5 and all("failure_reason" not in t.user_attrs for t in complete)
    assert [t.user_attrs.get("retry_of") for t in complete].count(1) == 1


def test_an_lm_studio_back_as_another_version_stops_the_sweep(
    lms: ServerProcess, write_study: WriteStudy, sweeps: Callable[..., Sweeper]
) -> None:
    path = write_study(STUDY.format(host=lms.address, trials=5))
    sweep = sweeps(path, "--no-confirm", "--engine-wait", "2m")
    sweep.until(trial)
    lms.kill()
    sweep.until(waiting)
    lms.start(app_version="0.4.22")
    assert sweep.wait() == 2
    last = sweep.stderr().splitlines()[-1]
    assert last.startswith(
        "error: LM Studio came back as another engine (LM Studio 0.4.21 (build 1) before, "
        "LM Studio 0.4.22 (build 1) now)"
    )


def test_confirmation_rounds_ride_out_a_restart(
    lms: ServerProcess, write_study: WriteStudy
) -> None:
    config = studyfile.load(write_study(STUDY.format(host=lms.address, trials=2)))
    spec = worker_spec(config)
    _, rounds = outage.runners(spec, 120, "LM Studio 0.4.21 (build 1)", wait_s=120)
    configs = [
        compare.Config("baseline", LoadSettings(context_length=512)),
        compare.Config("candidate", LoadSettings(context_length=256)),
    ]
    restart = threading.Timer(1.0, lms.start)

    def on_round(r: int, label: str) -> None:
        if (r, label) == (1, "candidate"):  # LM Studio quits; started again meanwhile
            lms.kill()
            restart.start()

    try:
        results = compare.run_rounds(configs, ["short", "long"], 2, rounds, on_round)
    finally:  # the fixture then stops the restarted server: none outlives the test
        if restart.is_alive():
            restart.join()
    assert restart.finished.is_set()
    assert [len(r.rounds["short"]["tok_s"]) for r in results] == [2, 2]


def test_a_comparison_whose_lm_studio_does_not_return_is_one_line(
    lms: ServerProcess, write_study: WriteStudy, tmp_path: Path
) -> None:
    path = write_study(STUDY.format(host=lms.address, trials=2))
    for name, ctx in (("a", 512), ("b", 256)):
        (tmp_path / f"{name}.toml").write_text(f"context_length = {ctx}\n", encoding="utf-8")
    argv = [sys.executable, "-m", "sweeper", "compare", str(path), "--repeats", "2"]
    argv += ["--config", str(tmp_path / "a.toml"), "--config", str(tmp_path / "b.toml")]
    with subprocess.Popen(
        [*argv, "--engine-wait", "2s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith("round 1/2: b"):
                lms.kill()
                break
        err = process.stderr.read()
        assert process.wait(60) == 2
    assert err.splitlines()[-1].startswith(
        "error: comparison stopped: LM Studio did not come back within 2 s"
    )
    assert err.splitlines()[-1].endswith("nothing of a comparison is stored: run it again")
    assert "kept" not in err.splitlines()[-1]  # a comparison keeps nothing: said once, truly
    assert "Traceback" not in err


def test_a_run_overlapping_another_models_load_is_measured_again(
    model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lmstudio

    with (
        LMStudioTestServer([ServerModel(KEY, model_path)]) as srv,
        LMStudioBackend(KEY, host=srv.address) as backend,
        lmstudio.Client(srv.address) as other_app,
    ):
        backend.load(LoadSettings(context_length=512))
        respond = lmstudio_sdk.respond_stream_with_raw_fields
        loads = iter(["another-app-model"])

        def while_measuring(*args: Any) -> Any:
            stream = respond(*args)
            for identifier in loads:  # once: another app loads a model as sweeper measures
                other_app.llm.load_new_instance(KEY, identifier, ttl=None)
            return stream

        monkeypatch.setattr(lmstudio_sdk, "respond_stream_with_raw_fields", while_measuring)
        results = measure_workloads(backend, [builtin("short", 4)], Sampling(), 2, 0)
    runs = results["short"].runs
    assert len(runs) == 2 and len(srv.log.predictions) == 3
    assert runs[0].backend_stats["measured_again_after_disturbance"] == 1
    assert "disturbed" not in runs[0].backend_stats and "disturbed" not in runs[1].backend_stats
