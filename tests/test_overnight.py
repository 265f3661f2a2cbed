"""Overnight-proof: several workers on one PostgreSQL study, a worker killed with SIGKILL
mid-trial, machines that differ. Real processes, the real model, a real database."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import psutil
import pytest
import sqlalchemy.exc
from click.testing import CliRunner
from optuna.trial import TrialState

from conftest import FAKE_STUDY, REAL_STUDY, WriteStudy, study_when_ready
from sweeper import fingerprint, records, schedule, system
from sweeper.cli import cli
from sweeper.storage import open_storage

SWEEPER = str(Path(sys.executable).parent / "sweeper")
TINY = (
    REAL_STUDY.replace("repeats = 2\nwarmup = 1", "repeats = 1\nwarmup = 0")
    .replace("max_tokens = 12", "max_tokens = 6")
    .replace("max_tokens = 8", "max_tokens = 4")
)


@pytest.mark.real
def test_two_workers_share_one_postgresql_study(write_study: WriteStudy, postgres_url: str) -> None:
    path = write_study(TINY)
    args = [SWEEPER, "run", str(path), "--storage", postgres_url, "--trials", "8", "--no-confirm"]
    # two rigs: each has its own home (and machine lock); on one rig the second would wait
    workers = [
        subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ | {"SWEEPER_HOME": str(path.parent / f"rig{i}")},
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, err
        assert "not-a-secret" not in out + err
    # sweeper's own storage: a connection per operation, none left open for the GC to find
    study = optuna.load_study(study_name="real", storage=open_storage(postgres_url))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    assert [t.user_attrs.get("tag") for t in study.trials].count("baseline") == 1

    status = CliRunner().invoke(cli, ["status", str(path), "--storage", postgres_url, "--json"])
    assert status.exit_code == 0
    summary = json.loads(status.stdout)
    assert summary["complete"] == 8
    assert len(summary["workers"]) == 2  # both workers are visible, with their trial counts
    # not a queued baseline re-run, nor a trial that yielded to the other worker's at the target
    ran = [t for t in study.trials if t.state not in (TrialState.WAITING, TrialState.PRUNED)]
    assert sum(summary["workers"].values()) == len(ran)
    text = CliRunner().invoke(cli, ["status", str(path), "--storage", postgres_url]).stdout
    assert "not-a-secret" not in text and "sweeper:***@" in text


def test_psycopg2_urls_still_work(postgres_url: str, write_study: WriteStudy) -> None:
    """Both drivers: the README's postgresql:// (psycopg 3) and postgresql+psycopg2://."""
    path = write_study(FAKE_STUDY)
    url = postgres_url.replace("postgresql://", "postgresql+psycopg2://")
    result = CliRunner().invoke(cli, ["run", str(path), "--storage", url, "--trials", "2"])
    assert result.exit_code == 0, result.stderr
    status = CliRunner().invoke(cli, ["status", str(path), "--storage", postgres_url, "--json"])
    assert json.loads(status.stdout)["complete"] == 2  # one study, seen through either driver


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.real
def test_a_killed_worker_is_retried_and_nothing_is_lost(write_study: WriteStudy) -> None:
    """The next run on the same machine retries the killed trial at once: it does not wait
    for the heartbeat's grace (2 minutes here), which is for a worker on another machine."""
    text = REAL_STUDY.replace("max_tokens = 12", "max_tokens = 64")
    path = write_study(text)
    storage = f"sqlite:///{path.parent / 'real.db'}"
    proc = subprocess.Popen(
        [SWEEPER, "run", str(path), "--trials", "3", "--no-confirm"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    study = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        time.sleep(0.5)
        study = study_when_ready("real", storage)
        if study is None:
            continue
        states = [t.state for t in study.trials]
        started = [
            t for t in study.trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs
        ]
        if states.count(TrialState.COMPLETE) >= 1 and started:
            break
    assert study is not None
    # every process below the sweep: the trial's worker is a grandchild on Linux (forked by a
    # fork server, sweeper's child), a child elsewhere
    workers = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    assert workers, "no trial worker below the sweep"
    time.sleep(2.0)  # the worker is loading or generating now
    before = [
        (t.number, t.params, t.values) for t in study.trials if t.state == TrialState.COMPLETE
    ]
    running = [t.number for t in study.trials if t.state == TrialState.RUNNING]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(50):  # the trial's worker dies with its parent, it does not go on
        if not any(_alive(w) for w in workers):
            break
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers)

    result = subprocess.run(
        [SWEEPER, "run", str(path), "--trials", "3", "--no-confirm"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="real", storage=storage)
    by_number = {t.number: t for t in study.trials}
    for number, params, values in before:  # every completed trial is intact
        assert (by_number[number].params, by_number[number].values) == (params, values)
    assert [by_number[n].state for n in running] == [TrialState.FAIL]
    assert by_number[running[0]].user_attrs["failure_reason"] == "killed"
    retried = [t for t in study.trials if t.user_attrs.get("retry_of") == running[0]]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == by_number[running[0]].params
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 3


def test_a_storage_a_child_is_creating_is_opened_once_its_tables_are_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite says "table ... already exists" to the second of two processes creating a
    storage's tables at once (a page of the service or a poller opening the storage of a sweep
    that is starting): the open is tried again, as for two workers; another error is not."""
    from sweeper import storage
    from sweeper.errors import StorageError

    real, calls = storage.RDBStorage, []

    def opening(error: str) -> Callable[..., object]:
        def rdb(*args: object, **kwargs: object) -> object:
            calls.append(error)
            if len(calls) == 1:
                raise sqlalchemy.exc.OperationalError("CREATE TABLE", {}, Exception(error))
            return real(*args, **kwargs)  # type: ignore[arg-type]

        return rdb

    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    monkeypatch.setattr(storage, "RDBStorage", opening("table study_directions already exists"))
    assert isinstance(storage.open_storage(url), real) and len(calls) == 2
    calls.clear()
    monkeypatch.setattr(storage, "RDBStorage", opening("unable to open database file"))
    with pytest.raises(StorageError, match="unable to open database file"):
        storage.open_storage(url)
    assert len(calls) == 1  # at once, not after the retries' sleeps


def test_only_this_machines_trials_whose_process_is_gone_are_orphans() -> None:
    study = optuna.create_study(directions=["maximize"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    workers = {
        "alive": f"{host}:{os.getpid()}",
        "gone": f"{host}:{gone.pid}",
        "elsewhere": f"another-rig:{gone.pid}",  # the heartbeat's, after its grace
        "unnamed": None,  # killed before it said who ran it: the heartbeat's too
    }
    for name, worker in workers.items():
        trial = study.ask()
        trial.set_user_attr("name", name)
        if worker:
            trial.set_user_attr("worker", worker)
    recs = records.load(study)
    names = {r.number: study.trials[r.number].user_attrs["name"] for r in recs}
    found = schedule.orphans(recs, host, system.process_alive)
    assert [names[r.number] for r in found] == ["gone"]

    # our own pid, recorded by a trial that started before this process did: a reused pid
    earlier = [dataclasses.replace(r, datetime_start=datetime.datetime(2001, 1, 1)) for r in recs]
    found = schedule.orphans(earlier, host, system.process_alive)
    assert [names[r.number] for r in found] == ["alive", "gone"]

    records.killed(study, found[1].number)
    again = records.load(study)
    assert [names[r.number] for r in schedule.retries(again)] == ["gone"]


def test_an_engine_version_sweeper_could_not_read_is_not_compared() -> None:
    """LM Studio studies from before sweeper read the app's version hold the SDK's there
    (1.5.0); an LM Studio that did not say leaves it out. Neither refuses a resume; two known
    versions that differ do."""
    base = {"cpu": "x", "cores": 2, "ram_gb": 8, "gpus": [], "backend": "lmstudio", "model": {}}
    old = base | {"backend_version": "1.5.0"}
    new = base | {"backend_version": "LM Studio 0.4.21 (build 1)"}
    newer = base | {"backend_version": "LM Studio 0.4.22 (build 1)"}
    assert fingerprint.differences(old, new) == []
    assert fingerprint.differences(base | {"backend_version": None}, new) == []
    assert fingerprint.differences(new, newer) == [
        "backend_version: 'LM Studio 0.4.21 (build 1)' vs 'LM Studio 0.4.22 (build 1)'"
    ]
    other = base | {"backend": "llama-server"}
    assert fingerprint.differences(
        other | {"backend_version": "b1"}, other | {"backend_version": "b2"}
    )


def test_a_different_machine_is_refused_unless_allowed(write_study: WriteStudy) -> None:
    path = write_study(FAKE_STUDY)
    assert CliRunner().invoke(cli, ["run", str(path), "--trials", "1"]).exit_code == 0
    storage = f"sqlite:///{path.parent / 'fake.db'}"
    study = optuna.load_study(study_name="fake", storage=storage)
    study.set_user_attr("machine", {**study.user_attrs["machine"], "cpu": "Other CPU 9000"})

    refused = CliRunner().invoke(cli, ["run", str(path), "--trials", "2"])
    assert refused.exit_code == 2
    assert refused.stderr.startswith(
        "error: this machine differs from the one study 'fake' "
        "started on (cpu: 'Other CPU 9000' vs "
    )
    assert "--allow-mixed-hardware" in refused.stderr
    assert len(optuna.load_study(study_name="fake", storage=storage).trials) == 1

    allowed = CliRunner().invoke(cli, ["run", str(path), "--trials", "2", "--allow-mixed-hardware"])
    assert allowed.exit_code == 0, allowed.stderr
    assert len(optuna.load_study(study_name="fake", storage=storage).trials) == 2


def test_every_trial_is_in_the_study_log(write_study: WriteStudy) -> None:
    path = write_study(FAKE_STUDY)
    assert CliRunner().invoke(cli, ["run", str(path), "--trials", "2"]).exit_code == 0
    lines = (path.parent / "fake.log").read_text().splitlines()
    assert sum(" trial 0 start: " in ln for ln in lines) == 1
    done = [ln for ln in lines if " trial 1 done: " in ln]
    assert len(done) == 1
    record = json.loads(done[0].split(" trial 1 done: ", 1)[1])
    assert set(record) >= {"applied", "mismatch", "workloads", "load_s"}
    assert record["workloads"]["short"]["runs"]


def test_results_are_grouped_by_machine_when_mixed(write_study: WriteStudy) -> None:
    from conftest import fake_runner
    from sweeper import config as studyfile
    from sweeper import fronts, records
    from sweeper.sweep import Sweep

    config = studyfile.load(write_study(FAKE_STUDY))
    for cpu, trials in (("CPU A", 2), ("CPU B", 4)):
        sweep = Sweep(config, fake_runner(config), machine={"cpu": cpu, "cores": 2})
        sweep.run(sweep.open(), trials=trials)
    recs = records.load(sweep.open())
    assert sorted(fronts.status(recs, ["short"], [])["machines"].values()) == [2, 2]
    assert len({p.machine for p in fronts.points(recs, "short")}) == 2


def signal_state(pid: int) -> dict[str, list[str]]:
    """Each thread of ``pid``: its name, blocked, pending, ignored and caught signal masks."""
    out = {}
    keys = ("Name", "SigBlk", "SigPnd", "ShdPnd", "SigIgn", "SigCgt")
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                out[tid] = [
                    ln.split(None, 1)[1] for ln in f.read().splitlines() if ln.startswith(keys)
                ]
    return out


#: Ctrl-C as a terminal's foreground command gets it, whatever the test run inherited: a run
#: started as a background job of a non-interactive shell (`pytest ... &` in a script) has
#: SIGINT ignored, and so would `sweeper run`, which then rightly goes on
AS_FROM_A_TERMINAL = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["2", "15"])
def test_ctrl_c_and_sigterm_stop_cleanly_and_resume(
    write_study: WriteStudy, sig: signal.Signals
) -> None:
    path = write_study(FAKE_STUDY.replace('model = "fake-model"', 'model = "fake:slow"'))
    storage = f"sqlite:///{path.parent / 'fake.db'}"
    proc = subprocess.Popen(
        [*AS_FROM_A_TERMINAL, SWEEPER, "run", str(path), "--trials", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline, seen = time.monotonic() + 60, False
    while time.monotonic() < deadline and not seen:
        time.sleep(0.2)
        ready = study_when_ready("fake", storage)
        if ready is None:
            continue
        trials = ready.trials
        seen = (
            any(t.state == TrialState.COMPLETE for t in trials)
            and trials[-1].state == TrialState.RUNNING
        )
    assert seen, "no running trial after a complete one in 60 s"
    before = signal_state(proc.pid)
    proc.send_signal(sig)
    time.sleep(1)
    after = signal_state(proc.pid)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, f"before the signal: {before} after: {after} {err[-500:]}"
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        "error: interrupted: the running trial was stopped and will run "
        "again on resume; 1 complete trials are stored in"
    )
    assert "Traceback" not in err
    study = optuna.load_study(study_name="fake", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]

    resumed = subprocess.run(
        [SWEEPER, "run", str(path), "--trials", "3", "--no-confirm"],  # the resume is asserted
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    trials = optuna.load_study(study_name="fake", storage=storage).trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert trials[2].user_attrs["retry_of"] == 1


def test_a_stop_while_optuna_creates_a_trial_is_taken_back_on_resume(
    write_study: WriteStudy,
) -> None:
    """SIGTERM (the service's Stop) landing while Optuna creates the next trial, before the
    trial is sweeper's: the trial is stopped and run again on resume, not left running with no
    worker to count towards the target for good (the resumed sweep ended one trial short)."""
    from conftest import fake_runner
    from sweeper import config as studyfile
    from sweeper.sweep import Sweep

    config = studyfile.load(write_study(FAKE_STUDY))
    sweep = Sweep(config, fake_runner(config), machine={"cpu": "CPU A", "cores": 2})
    study = sweep.open()

    def stop_inside_ask(s: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        if t.number == 0:  # the sampler's first step inside Optuna's study.ask()
            before = s.sampler.before_trial

            def before_trial(st: optuna.Study, tr: optuna.trial.FrozenTrial) -> None:
                os.kill(os.getpid(), signal.SIGTERM)
                before(st, tr)

            s.sampler.before_trial = before_trial  # type: ignore[method-assign]

    with pytest.raises(KeyboardInterrupt), system.terminate_as_interrupt():
        sweep.run(study, trials=3, callbacks=[stop_inside_ask])
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    with system.terminate_as_interrupt():
        sweep.run(study, trials=3)
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states and states.count(TrialState.COMPLETE) == 3


def test_a_ctrl_c_between_trials_stops_the_sweep_at_the_next_trial(
    write_study: WriteStudy, drop_ctrl_c: Callable[[], list[object]]
) -> None:
    from conftest import fake_runner
    from sweeper import config as studyfile
    from sweeper import system
    from sweeper.sweep import Sweep

    config = studyfile.load(write_study(FAKE_STUDY))
    sweep = Sweep(config, fake_runner(config), machine={"cpu": "CPU A", "cores": 2})
    study = sweep.open()
    dropped: list[object] = []
    with pytest.raises(KeyboardInterrupt), system.terminate_as_interrupt():
        sweep.run(study, trials=3, callbacks=[lambda s, t: dropped.extend(drop_ctrl_c())])
    assert dropped == []  # after trial 0: kept as a stop, not raised inside Optuna's storing
    first, second = study.trials  # the next trial is not measured, and runs again on resume
    assert first.state == TrialState.COMPLETE and second.state == TrialState.FAIL
    assert second.user_attrs["failure_reason"] == "interrupted"
