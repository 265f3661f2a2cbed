"""The `sweeper` command: parse, call the library, format. Progress to stderr, results to stdout."""

from __future__ import annotations

import functools
import json
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import optuna

from sweeper import compare as comparison
from sweeper import config as config_file
from sweeper import confirm, export, fingerprint, fronts, records, stats, sweep, terminal
from sweeper import report as report_mod
from sweeper.backends import backend_class
from sweeper.config import StudyConfig
from sweeper.errors import SweeperError, TrialFailure
from sweeper.files import write_atomic
from sweeper.progress import ProgressBar
from sweeper.recommend import for_study
from sweeper.runner import ChildProcessRunner, Runner, WorkerError, worker_spec
from sweeper.storage import open_study, redact

log = logging.getLogger("sweeper")
F = TypeVar("F", bound=Callable[..., Any])


class Failure(click.ClickException):
    """A one-line error: what is wrong and what to do. Exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _fail(message: str) -> NoReturn:
    raise Failure(message)


@contextmanager
def _errors() -> Iterator[None]:
    """The one place a library error becomes a one-line message and exit code 2."""
    try:
        yield
    except SweeperError as exc:
        raise Failure(str(exc)) from None


def study_command(fn: F) -> F:
    """STUDY.toml and --storage, shared by every command, and the one error handler."""

    @click.argument("study_file", metavar="STUDY.toml", type=click.Path(dir_okay=False))
    @click.option("--storage", metavar="URL", help="Storage URL; overrides the study file's.")
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _errors():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
CONFIRM_HELP = "Confirm each recommendation side by side with the baseline at the end."
LEVELS = click.FloatRange(min=0.5, max=1, max_open=True)
CONFIG_HELP = "A TOML file of load settings. Repeat; the first is the reference."
TRIAL_HELP = "The configuration of trial N of the study. Repeatable."
ROUNDS_HELP = "Rounds; each loads every configuration once, in a rotating order."
MIN_EFFECT_HELP = "Smallest relative difference called faster/slower."
LEVEL_HELP = (
    "Confidence level of the intervals; with no difference, about 1 - LEVEL of rows still get "
    "a verdict: raise it to read many rows."
)
host_option = click.option(
    "--host", metavar="HOST:PORT", help="Backend server (LM Studio); overrides the study file's."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="sweeper")
@click.option("-v", "--verbose", count=True, help="Log more (-v: each trial, -vv: each run).")
def cli(verbose: int) -> None:
    """Find the fastest load settings for a local LLM, per workload."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel([logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)])
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@cli.command()
@study_command
@click.option("--trials", type=click.IntRange(min=1), metavar="N", help="Complete trials to reach.")
@click.option("--timeout", metavar="DURATION", help="Start no new trial after this, e.g. 8h.")
@host_option
@click.option("--allow-mixed-hardware", is_flag=True, help="Join a study of another machine.")
@click.option("--confirm/--no-confirm", "confirm_at_end", default=True, help=CONFIRM_HELP)
def run(
    study_file: str,
    storage: str | None,
    trials: int | None,
    timeout: str | None,
    host: str | None,
    allow_mixed_hardware: bool,
    confirm_at_end: bool,
) -> None:
    """Run (or resume) the sweep described by STUDY.toml, then confirm its recommendations."""
    config = config_file.load(study_file)
    timeout_s = (
        config_file.parse_duration(timeout, "--timeout") if timeout else config.budget.timeout_s
    )
    the_sweep, study = sweep.prepare(config, storage, host, allow_mixed_hardware)
    target, url = trials or config.budget.trials, redact(storage or config.storage)
    done = records.complete(study)
    ran, stopped = 0, None
    if done >= target:
        click.echo(
            f"study {config.name!r} already holds {done} complete trials "
            f"(target {target}); raise --trials to run more",
            err=True,
        )
    else:
        # Optuna logs an interrupted trial with a traceback; sweeper says it in one line instead
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        log.info("run %s: target %d trials, storage %s", config.name, target, url)
        bar = ProgressBar(config, total=target - done)
        the_sweep.progress = bar.on_progress
        try:
            with sweep.session(config) as signals:
                ran = the_sweep.run(study, trials, timeout_s, callbacks=[bar.on_trial])
        except KeyboardInterrupt:
            stopped = (
                f"interrupted: the running trial was stopped and will run again on resume; "
                f"{records.complete(study)} complete trials are stored in {url}; "
                "run the same command to resume"
            )
            auto = confirm_at_end and config.confirm.auto
            if signals.terminated or not auto or not confirm.pending(study, config):
                _fail(stopped)
            click.echo(f"{stopped}; confirming first (Ctrl-C again to skip)", err=True)
        except WorkerError as exc:
            bar.close()
            click.echo(str(exc), err=True)
            _fail(
                "internal error in the trial worker (traceback above); the trial is marked "
                "FAIL and completed trials are kept; please report this"
            )
        finally:
            bar.close()
    if confirm_at_end and config.confirm.auto:
        _confirm(
            study, config, the_sweep.round_runner, None, again=False, machine=the_sweep.machine
        )
    if stopped:
        _fail(stopped)
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
        confirm.confirm_study(
            study, config, runner, only, again, on_round, fingerprint.short_id(machine)
        )
    except TrialFailure as exc:
        _fail(f"confirmation stopped: a configuration could not be measured: {exc}")
    except KeyboardInterrupt:
        _fail(
            "interrupted during the confirmation: the sweep's trials are stored; "
            "run `sweeper confirm` to confirm later"
        )


@cli.command("confirm")
@study_command
@click.option("--workload", "-w", metavar="NAME", help="Only this workload.")
@click.option("--rounds", type=click.IntRange(min=2), help="Most rounds (default: the study's).")
@host_option
def confirm_cmd(
    study_file: str, storage: str | None, workload: str | None, rounds: int | None, host: str | None
) -> None:
    """Re-measure each recommendation side by side with the baseline, the only source of a
    claimed gain."""
    config = config_file.load(study_file)
    config.check_workload(workload)
    if rounds:
        min_rounds = min(rounds, config.confirm.min_rounds)
        config = replace(
            config, confirm=replace(config.confirm, rounds=rounds, min_rounds=min_rounds)
        )
    the_sweep, study = sweep.prepare(config, storage, host, allow_mixed_hardware=True)
    _confirm(study, config, the_sweep.round_runner, workload, again=True, machine=the_sweep.machine)
    click.echo(terminal.recommendations_text(for_study(study, config, workload)))


@cli.command()
@study_command
@click.option("--config", "config_files", multiple=True, metavar="FILE.toml", help=CONFIG_HELP)
@click.option("--trial", "trial_numbers", multiple=True, type=int, metavar="N", help=TRIAL_HELP)
@click.option("--repeats", default=5, type=click.IntRange(min=2), help=ROUNDS_HELP)
@click.option("--min-effect", default=0.01, type=float, help=MIN_EFFECT_HELP)
@click.option("--level", default=stats.LEVEL, type=LEVELS, help=LEVEL_HELP)
@host_option
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
        _fail("give at least two configurations (--config FILE.toml or --trial N)")
    configs = comparison.distinct(configs)
    runner = ChildProcessRunner(worker_spec(config, host, repeats=1), config.budget.trial_timeout_s)

    def on_round(r: int, label: str) -> None:
        click.echo(f"round {r + 1}/{repeats}: {label}", err=True)

    try:
        measured = comparison.run_rounds(
            configs, [w.name for w in config.workloads], repeats, runner, on_round
        )
    except TrialFailure as exc:
        _fail(f"a configuration could not be measured: {exc.reason}: {exc.detail}")
    except KeyboardInterrupt:
        _fail("interrupted: nothing of a comparison is stored; run it again")
    rows = comparison.analyse(measured, min_effect, level)
    if as_json:
        click.echo(json.dumps(comparison.to_json(measured, rows, min_effect, level), indent=2))
        return
    click.echo(terminal.comparison_tables(rows, measured, repeats, level))


@cli.command()
@study_command
@json_option
def status(study_file: str, storage: str | None, as_json: bool) -> None:
    """Trials done, infeasible ones by reason, and the recommendation per workload."""
    config = config_file.load(study_file)
    study = open_study(config, storage)
    names = [w.name for w in config.workloads]
    summary: dict[str, Any] = {"study": study.study_name}
    summary |= fronts.status(records.load(study), names, records.drift_events(study))
    views = for_study(study, config)
    summary["recommendations"] = {
        w: v.recommendation.to_dict() for w, v in views.items() if v.recommendation
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(terminal.status_text(summary, redact(storage or config.storage)))
    click.echo(terminal.recommendations_text(views, "recommended "))


@cli.command()
@study_command
@click.option("--workload", "-w", metavar="NAME", help="Only this workload.")
@json_option
def pareto(study_file: str, storage: str | None, workload: str | None, as_json: bool) -> None:
    """The non-dominated trials per workload: tok/s up, time to first token down."""
    config = config_file.load(study_file)
    config.check_workload(workload)
    views = for_study(open_study(config, storage), config, workload)
    if as_json:
        click.echo(json.dumps({w: v.to_dict() for w, v in views.items()}, indent=2))
        return
    searched = list(config.space.dimensions)
    click.echo(terminal.fronts_text(list(views.values()), searched, config.measure.repeats))


@cli.command()
@study_command
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    help="Default: <study name>-report.html next to the study file.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def report(study_file: str, storage: str | None, output: str | None, force: bool) -> None:
    """Write a self-contained HTML report (opens offline)."""
    config = config_file.load(study_file)
    study = open_study(config, storage)
    path = Path(output) if output else config.base_dir / f"{config.name}-report.html"
    report_mod.write_report(study, config, redact(storage or config.storage), path, force)
    click.echo(str(path))


@cli.command("export")
@study_command
@click.option("--workload", "-w", metavar="NAME", help="The workload whose preset to export.")
@click.option("--format", "fmt", type=click.Choice(export.FORMATS), default="json")
@click.option("-o", "--output", metavar="FILE", help="Write here instead of to stdout.")
@click.option(
    "--all",
    "all_dir",
    metavar="DIR",
    help="Write every workload in every format, and the HTML report, into DIR.",
)
@click.option(
    "--install",
    is_flag=True,
    help="lmstudio format: also write LM Studio's "
    "per-model default config (an existing one is backed up first).",
)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def export_cmd(
    study_file: str,
    storage: str | None,
    workload: str | None,
    fmt: str,
    output: str | None,
    all_dir: str | None,
    install: bool,
    force: bool,
) -> None:
    """Export the recommended preset of a workload for LM Studio or llama.cpp."""
    config = config_file.load(study_file)
    config.check_workload(workload)
    if all_dir is None and workload is None:
        _fail(f"give --workload NAME ({', '.join(w.name for w in config.workloads)}) or --all DIR")
    if install and fmt != "lmstudio":
        _fail("--install goes with --format lmstudio")
    study = open_study(config, storage)
    if all_dir is not None:
        url = redact(storage or config.storage)
        written, skipped = export.export_all(study, config, url, Path(all_dir), force)
        for path in written:
            click.echo(str(path))
        for line in skipped:
            click.echo(line, err=True)
        return
    assert workload is not None
    preset = export.preset_for(study, config, workload)
    text = export.RENDER[fmt](preset)
    if output:
        write_atomic(Path(output), text, force=force)
        click.echo(output)
    else:
        click.echo(text, nl=False)
    if install:
        target, backup = export.install_lmstudio(preset)
        kept = f" (previous one kept as {backup})" if backup else ""
        click.echo(f"installed {target}{kept}", err=True)
    elif fmt == "lmstudio":
        click.echo(
            f"LM Studio reads this from {export.lmstudio_install_path(preset.model)} "
            "(write it there with --install)",
            err=True,
        )


@cli.command()
@study_command
@click.option("--host", default="127.0.0.1", help="Address to bind; tunnel with ssh -L to share.")
@click.option("--port", default=8080, type=int)
def dashboard(study_file: str, storage: str | None, host: str, port: int) -> None:
    """Watch the study live in optuna-dashboard."""
    from optuna_dashboard import run_server

    config = config_file.load(study_file)
    study = open_study(config, storage)
    click.echo(
        f"optuna-dashboard for {config.name} on http://{host}:{port}/ (Ctrl-C to stop); "
        "note: it shows infeasible trials as feasible (it does not read Optuna 5's "
        "constraints), their placeholder values keep them off its front",
        err=True,
    )
    run_server(study._storage, host=host, port=port)


def main() -> None:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    cli()
