"""Commands that measure, or plan to: run (then confirm), confirm, compare, plan."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import msgspec
import optuna

from sweeper import compare as comparison
from sweeper import config as config_file
from sweeper import (
    confirm,
    fingerprint,
    fronts,
    outage,
    plan,
    records,
    schedule,
    stats,
    sweep,
    terminal,
)
from sweeper.backends import backend_class
from sweeper.cli.common import (
    CONFIG_HELP,
    CONFIRM_HELP,
    LEVEL_HELP,
    LEVELS,
    MIN_EFFECT_HELP,
    PREFILL_HELP,
    ROUNDS_HELP,
    TRIAL_HELP,
    fail,
    host_option,
    json_option,
    measures,
    study_command,
)
from sweeper.config import StudyConfig
from sweeper.errors import EngineAway, StorageError, TrialFailure
from sweeper.progress import JsonProgress, ProgressBar
from sweeper.recommend import for_study
from sweeper.runner import Runner, WorkerError, worker_spec
from sweeper.storage import open_study, redact

log = logging.getLogger("sweeper")
engine_wait_option = click.option(
    "--engine-wait",
    default="15m",
    metavar="DURATION",
    help="How long to wait for an engine (LM Studio) that went away before stopping.",
)


@click.command()
@study_command
@measures("run")
@click.option("--trials", type=click.IntRange(min=1), metavar="N", help="Complete trials to reach.")
@click.option("--timeout", metavar="DURATION", help="Start no new trial after this, e.g. 8h.")
@host_option
@click.option("--allow-mixed-hardware", is_flag=True, help="Join a study of another machine.")
@click.option("--confirm/--no-confirm", "confirm_at_end", default=True, help=CONFIRM_HELP)
@click.option("--progress", type=click.Choice(["bar", "json"]), default="bar", hidden=True)
@engine_wait_option
def run(
    study_file: str,
    storage: str | None,
    trials: int | None,
    timeout: str | None,
    host: str | None,
    allow_mixed_hardware: bool,
    confirm_at_end: bool,
    progress: str,
    engine_wait: str,
) -> None:
    """Run (or resume) the sweep described by STUDY.toml, then confirm its recommendations."""
    config = config_file.load(study_file)
    timeout_s = (
        config_file.parse_duration(timeout, "--timeout") if timeout else config.budget.timeout_s
    )
    wait_s = config_file.parse_duration(engine_wait, "--engine-wait")
    the_sweep, study = sweep.prepare(config, storage, host, allow_mixed_hardware, wait_s)
    target, url = trials or config.budget.trials, redact(storage or config.storage)
    recs = records.load(study)
    speeds = plan.speeds(config, recs)
    night = schedule.night(config, speeds, recs, timeout_s, target) if speeds else None
    overrun = plan.baseline_overrun(config, recs, night)
    if overrun:
        fail(overrun)
    if night is not None:
        click.echo(plan.summary(night), err=True)
    # Optuna logs an interrupted trial with a traceback; sweeper says it in one line instead
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    log.info("run %s: target %d trials, storage %s", config.name, target, url)
    bar = ProgressBar(config) if progress == "bar" else JsonProgress(config)
    the_sweep = the_sweep.watched(bar.on_progress, bar.stage)
    ran, stopped = 0, None
    try:
        with sweep.session(config) as stopping:
            ran = the_sweep.run(study, trials, timeout_s, callbacks=[bar.on_trial])
    except KeyboardInterrupt:
        stopped = (
            f"interrupted: the running trial was stopped and will run again on resume; "
            f"{records.complete(study)} complete trials are stored in {url}; "
            "run the same command to resume"
        )
        auto = confirm_at_end and config.confirm.auto
        if stopping.terminated or not auto or not confirm.pending(study, config):
            fail(stopped)
        click.echo(f"{stopped}; confirming first (Ctrl-C again to skip)", err=True)
    except WorkerError as exc:
        fail(f"{exc} ({config.base_dir / config.name}.log)")
    except EngineAway as exc:
        bar.engine_away(str(exc))
        fail(
            f"{exc}; {records.complete(study)} complete trials are stored in {url}; "
            "run the same command to resume"
        )
    finally:
        bar.close()
    if not ran and not stopped:
        click.echo(
            f"study {config.name!r} already holds {records.complete(study)} complete trials "
            f"(target {target}); raise --trials to run more",
            err=True,
        )
    if confirm_at_end and config.confirm.auto:
        if isinstance(bar, JsonProgress):
            bar.stage("confirmation", config.confirm.rounds)
        _confirm(
            study, config, the_sweep.round_runner, None, again=False, machine=the_sweep.machine
        )
    if stopped:
        fail(stopped)
    summary = fronts.status(records.load(study), [], [])
    click.echo(f"ran {ran} trials; {terminal.status_line(summary)}")
    click.echo(terminal.recommendations_text(for_study(study, config), "  "))
    click.echo(f"see the fronts with: sweeper pareto {study_file}")


def _confirm(
    study: optuna.Study,
    config: StudyConfig,
    runner: Runner,
    only: str | None,
    again: bool,
    machine: dict[str, Any],
) -> None:
    def on_round(r: int, label: str) -> None:
        click.echo(f"confirm round {r + 1}/{config.confirm.rounds}: {label}", err=True)

    try:
        with sweep.session(config):
            confirm.confirm_study(
                study,
                config,
                runner,
                only,
                again,
                on_round,
                fingerprint.short_id(machine),
                machine.get("backend_version"),
            )
    except WorkerError as exc:
        fail(f"confirmation stopped: {exc} ({config.base_dir / config.name}.log)")
    except EngineAway as exc:
        fail(f"confirmation stopped: {exc}; the sweep's trials are kept: run `sweeper confirm`")
    except TrialFailure as exc:
        fail(f"confirmation stopped: a configuration could not be measured: {exc}")
    except KeyboardInterrupt:
        fail(
            "interrupted during the confirmation: the sweep's trials are stored; "
            "run `sweeper confirm` to confirm later"
        )


@click.command("confirm")
@study_command
@measures("confirm")
@click.option("--workload", "-w", metavar="NAME", help="Only this workload.")
@click.option(
    "--rounds", type=click.IntRange(min=2), metavar="N", help="Most rounds (default: the study's)."
)
@host_option
@engine_wait_option
def confirm_cmd(
    study_file: str,
    storage: str | None,
    workload: str | None,
    rounds: int | None,
    host: str | None,
    engine_wait: str,
) -> None:
    """Re-measure each recommendation side by side with the baseline, the only source of a
    claimed gain."""
    config = config_file.load(study_file)
    config.check_workload(workload)
    if rounds:
        min_rounds = min(rounds, config.confirm.min_rounds)
        c = msgspec.structs.replace(config.confirm, rounds=rounds, min_rounds=min_rounds)
        config = replace(config, confirm=c)
    wait_s = config_file.parse_duration(engine_wait, "--engine-wait")
    the_sweep, study = sweep.prepare(config, storage, host, True, wait_s)
    _confirm(study, config, the_sweep.round_runner, workload, again=True, machine=the_sweep.machine)
    click.echo(terminal.recommendations_text(for_study(study, config, workload)))


@click.command()
@study_command
@measures("compare")
@click.option("--config", "config_files", multiple=True, metavar="FILE.toml", help=CONFIG_HELP)
@click.option("--trial", "trial_numbers", multiple=True, type=int, metavar="N", help=TRIAL_HELP)
@click.option("--repeats", default=5, type=click.IntRange(min=2), metavar="N", help=ROUNDS_HELP)
@click.option("--min-effect", default=0.01, type=float, metavar="X", help=MIN_EFFECT_HELP)
@click.option("--level", default=stats.LEVEL, type=LEVELS, metavar="P", help=LEVEL_HELP)
@host_option
@engine_wait_option
@json_option
def compare(
    study_file: str,
    storage: str | None,
    config_files: tuple[str, ...],
    trial_numbers: tuple[int, ...],
    repeats: int,
    min_effect: float,
    level: float,
    host: str | None,
    engine_wait: str,
    as_json: bool,
) -> None:
    """Compare configurations A/B properly: interleaved rounds, intervals and verdicts."""
    config = config_file.load(study_file)
    supported = backend_class(config.backend).supported
    configs = [comparison.config_file(Path(f), supported, config.backend) for f in config_files]
    if trial_numbers:
        recs = records.load(open_study(config, storage))
        configs += [comparison.trial_config(recs, n, config.name) for n in trial_numbers]
    if len(configs) < 2:
        fail("give at least two configurations (--config FILE.toml or --trial N)")
    configs = comparison.distinct(configs)
    wait_s = config_file.parse_duration(engine_wait, "--engine-wait")
    spec = worker_spec(config, host, repeats=1)
    engine = backend_class(config.backend).engine_version(dict(spec.options))
    _, runner = outage.runners(spec, config.budget.trial_timeout_s, engine, wait_s)

    def on_round(r: int, label: str) -> None:
        click.echo(f"round {r + 1}/{repeats}: {label}", err=True)

    try:
        with sweep.session(config):
            measured = comparison.run_rounds(
                configs, [w.name for w in config.workloads], repeats, runner, on_round
            )
    except WorkerError as exc:
        fail(f"{exc} ({config.base_dir / config.name}.log)")
    except EngineAway as exc:
        fail(f"comparison stopped: {exc}; nothing of a comparison is stored: run it again")
    except TrialFailure as exc:
        fail(f"a configuration could not be measured: {exc.reason}: {exc.detail}")
    except KeyboardInterrupt:
        fail("interrupted: nothing of a comparison is stored; run it again")
    rows = comparison.analyse(measured, min_effect, level)
    if as_json:
        click.echo(json.dumps(comparison.to_json(measured, rows, min_effect, level), indent=2))
        return
    click.echo(terminal.comparison_tables(rows, measured, repeats, level))


@click.command("plan")
@study_command
@click.option("--timeout", metavar="DURATION", help="The budget, e.g. 8h (default: the file's).")
@click.option("--trials", type=click.IntRange(min=1), metavar="N", help="Trials to plan for.")
@click.option(
    "--assume-tok-s",
    type=click.FloatRange(0, plan.MAX_ASSUMED_TOK_S, min_open=True),
    metavar="TOK_S",
    help="Decode speed, until measured.",
)
@click.option(
    "--assume-load-s",
    type=click.FloatRange(0, plan.MAX_ASSUMED_LOAD_S),
    metavar="SECONDS",
    help="Load time, until measured.",
)
@click.option("--assume-prefill-tok-s", type=float, metavar="TOK_S", help=PREFILL_HELP)
@json_option
def plan_cmd(
    study_file: str,
    storage: str | None,
    timeout: str | None,
    trials: int | None,
    assume_tok_s: float | None,
    assume_load_s: float | None,
    assume_prefill_tok_s: float | None,
    as_json: bool,
) -> None:
    """What a night buys: the cost of a screening, a full measurement and the confirmation,
    and how many configurations fit."""
    config = config_file.load(study_file)
    timeout_s = (
        config_file.parse_duration(timeout, "--timeout") if timeout else config.budget.timeout_s
    )
    try:
        recs = records.load(open_study(config, storage))
    except StorageError:  # no study yet: plan from the assumptions
        recs = []
    speeds = plan.speeds(config, recs, assume_tok_s, assume_load_s, assume_prefill_tok_s)
    if speeds is None:
        fail(
            "the study has no measured baseline yet: give --assume-tok-s (and --assume-load-s) "
            "to plan with, e.g. what LM Studio shows for this model"
        )
    night = schedule.night(config, speeds, recs, timeout_s, trials)
    if as_json:
        click.echo(json.dumps(night.to_dict(), indent=2))
        return
    click.echo(terminal.plan_text(config.name, night))
