"""A crash of `sweeper serve` (SIGKILL: no chance to stop anything) takes its sweep and the
sweep's worker with it, and the next start resumes the sweep: every completed trial kept, the
interrupted one run again at once (not after the storage heartbeat's grace)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import optuna
from optuna.trial import TrialState

from conftest import study_when_ready
from service_process import Service, alive, ours, study


def running_trial(storage: str) -> tuple[list[Any], int] | None:
    """(the complete trials, the number of the one running) once two are done and a third
    has started measuring."""
    ready = study_when_ready("slow", storage)
    if ready is None:
        return None
    trials = ready.trials
    complete = [(t.number, t.values) for t in trials if t.state == TrialState.COMPLETE]
    running = [
        t.number for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs
    ]
    return (complete, running[0]) if len(complete) >= 2 and running else None


def test_a_crashed_service_resumes_its_sweep_and_leaves_nothing_running(
    tmp_path: Path, services: list[Service]
) -> None:
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "slow.toml").write_text(study("slow", "fake:slow", 8))
    storage = f"sqlite:///{studies / 'slow.db'}"
    env = os.environ | {"SWEEPER_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    service = Service(studies, env)
    services.append(service)
    service.start()
    queued = httpx.post(service.url + "/api/sweeps", json={"study": "slow.toml"}).json()

    end, seen = time.monotonic() + 120, None
    while seen is None and time.monotonic() < end:
        time.sleep(0.2)
        seen = running_trial(storage)
    assert seen is not None, "no trial started after two completed"
    complete, interrupted = seen
    started = service.descendants()
    service.kill()
    assert alive(started) == [] and ours(studies) == []  # the sweep and its worker died too

    service.start()
    done = service.wait(queued["id"], {"finished"}, timeout_s=120)
    assert done["sweep"]["state"] == "finished"
    trials = {t.number: t for t in optuna.load_study(study_name="slow", storage=storage).trials}
    for number, values in complete:  # every completed trial kept as it was
        assert trials[number].state == TrialState.COMPLETE and trials[number].values == values
    assert trials[interrupted].state == TrialState.FAIL
    assert trials[interrupted].user_attrs["failure_reason"] == "killed"
    again = [t for t in trials.values() if t.user_attrs.get("retry_of") == interrupted]
    assert len(again) == 1 and again[0].state == TrialState.COMPLETE
    assert again[0].params == trials[interrupted].params
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 8
    started = service.descendants()
    service.stop()
    assert alive(started) == [] and ours(studies) == []
