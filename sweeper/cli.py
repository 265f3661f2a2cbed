"""The `sweeper` command: parse, call the library, format. Progress to stderr, results to stdout."""

from __future__ import annotations

import json
import logging
import signal
import sys
import tomllib
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import click
import optuna
import pandas as pd

from sweeper import compare as comparison
from sweeper import export, fingerprint, results, stats, studyfile
from sweeper import report as report_mod
from sweeper.backends import backend_class
from sweeper.errors import SweeperError, TrialFailure
from sweeper.files import write_atomic
from sweeper.measure import TrialOutcome
from sweeper.progress import ProgressBar
from sweeper.recommend import Recommendation, recommend_from
from sweeper.settings import LoadSettings, invalid_combination
from sweeper.study import Sweep, check_machine, open_study, redact
from sweeper.studyfile import StudyConfig, parse_duration
from sweeper.worker import WorkerError, WorkerSpec, run_in_child

log = logging.getLogger("sweeper")


class Failure(click.ClickException):
    """A one-line error: what is wrong and what to do. Exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _fail(message: str) -> NoReturn:
    raise Failure(message)


study_argument = click.argument("study_file", metavar="STUDY.toml", type=click.Path(dir_okay=False))
storage_option = click.option(
    "--storage", metavar="URL", help="Storage URL; overrides the study file's."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


def _load(path: str) -> StudyConfig:
    try:
        return studyfile.load(path)
    except SweeperError as exc:
        _fail(str(exc))


@cli.command()
@study_argument
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    metavar="N",
    help="Run until the study holds N complete trials (default: the study file's).",
)
@click.option("--timeout", metavar="DURATION", help="Start no new trial after this, e.g. 8h.")
@storage_option
@click.option(
    "--host", metavar="HOST:PORT", help="Backend server (LM Studio); overrides the study file's."
)
@click.option(
    "--allow-mixed-hardware",
    is_flag=True,
    help="Join a study that another kind of machine started (results are grouped by machine).",
)
def run(
    study_file: str,
    trials: int | None,
    timeout: str | None,
    storage: str | None,
    host: str | None,
    allow_mixed_hardware: bool,
) -> None:
    """Run (or resume) the sweep described by STUDY.toml."""
    config = _load(study_file)
    try:
        timeout_s = parse_duration(timeout, "--timeout") if timeout else config.timeout_s
        model, options = backend_class(config.backend).preflight(
            config.model, config.base_dir, host or config.host, config.model_layers
        )
        spec = WorkerSpec(
            config.backend,
            model,
            config.workloads,
            config.sampling,
            config.repeats,
            config.warmup,
            tuple(options.items()),
            memory_limit_mb=config.memory_limit_mb,
        )
        machine = fingerprint.machine(config.backend, model)
        sweep = Sweep(
            config,
            lambda s, p, a: run_in_child(replace(spec, adaptive=a), s, config.trial_timeout_s, p),
            storage,
            machine,
        )
        study = sweep.open()
        check_machine(study, machine, allow_mixed_hardware)
    except SweeperError as exc:
        _fail(str(exc))
    target = trials or config.trials
    done = results.status(study, [])["complete"]
    if done >= target:
        click.echo(
            f"study {config.name!r} already holds {done} complete trials "
            f"(target {target}); raise --trials to run more",
            err=True,
        )
        return
    file_log = _log_to_file(config.base_dir / f"{config.name}.log")
    # Optuna logs an interrupted trial with a traceback; sweeper says it in one line instead
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    log.info(
        "run %s: target %d trials, storage %s",
        config.name,
        target,
        redact(storage or config.storage),
    )
    bar = ProgressBar(config, total=target - done)
    sweep.progress = bar.on_progress
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        ran = sweep.run(study, trials, timeout_s, callbacks=[bar.on_trial])
    except KeyboardInterrupt:
        bar.close()
        complete = results.status(study, [])["complete"]
        _fail(
            f"interrupted: the running trial was stopped and will run again on resume; "
            f"{complete} complete trials are stored in {redact(storage or config.storage)}; "
            f"run the same command to resume"
        )
    except SweeperError as exc:
        bar.close()
        _fail(str(exc))
    except WorkerError as exc:
        bar.close()
        click.echo(str(exc), err=True)
        _fail(
            "internal error in the trial worker (traceback above); the trial is marked FAIL "
            "and completed trials are kept; please report this"
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        log.removeHandler(file_log)
        file_log.close()
    bar.close()
    summary = results.status(study, [w.name for w in config.workloads])
    click.echo(f"ran {ran} trials; {_status_line(summary)}")
    for name, best in summary["best"].items():
        click.echo(f"  best {name}: {_best_line(best)}")
    click.echo(f"see the fronts with: sweeper pareto {study_file}")


def _log_to_file(path: Path) -> logging.Handler:
    """Every trial's settings, applied config, measurements and failures, for the morning after."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(message)s"))
    handler.setLevel(logging.INFO)
    log.addHandler(handler)
    return handler


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@cli.command()
@study_argument
@click.option(
    "--config",
    "config_files",
    multiple=True,
    metavar="FILE.toml",
    help="A configuration: a TOML table of load settings. Repeat; the first is the reference.",
)
@click.option(
    "--trial",
    "trial_numbers",
    multiple=True,
    type=int,
    metavar="N",
    help="A configuration taken from trial N of the study. Repeatable.",
)
@click.option(
    "--repeats",
    default=5,
    show_default=True,
    type=click.IntRange(min=2),
    help="Rounds: each loads every configuration once; the order rotates (A B, B A, ...).",
)
@click.option(
    "--min-effect",
    default=0.01,
    show_default=True,
    type=float,
    help="Smallest relative difference called faster/slower (0 = any the interval allows).",
)
@click.option(
    "--level",
    default=stats.LEVEL,
    show_default=True,
    type=click.FloatRange(min=0.5, max=1, max_open=True),
    help="Confidence level of the intervals. Where nothing differs, each row still gets a "
    "verdict in about 1 - LEVEL of comparisons: raise it to compare many rows.",
)
@click.option("--host", metavar="HOST:PORT", help="Backend server (LM Studio).")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def compare(
    study_file: str,
    config_files: tuple[str, ...],
    trial_numbers: tuple[int, ...],
    repeats: int,
    min_effect: float,
    level: float,
    host: str | None,
    storage: str | None,
    as_json: bool,
) -> None:
    """Compare configurations A/B properly: interleaved rounds, intervals and verdicts."""
    config = _load(study_file)
    configs = [_config_file(Path(f), config) for f in config_files]
    if trial_numbers:
        study = _open(config, storage)
        configs += [_trial_config(study, n) for n in trial_numbers]
    if len(configs) < 2:
        _fail("give at least two configurations (--config FILE.toml or --trial N)")
    labels = [c.label for c in configs]
    configs = [  # the same file twice (an A/A check) gets two names
        comparison.Config(f"{c.label} ({labels[:i].count(c.label) + 1})", c.settings)
        if labels.count(c.label) > 1
        else c
        for i, c in enumerate(configs)
    ]
    try:
        model, options = backend_class(config.backend).preflight(
            config.model, config.base_dir, host or config.host, config.model_layers
        )
    except SweeperError as exc:
        _fail(str(exc))
    spec = WorkerSpec(
        config.backend,
        model,
        config.workloads,
        config.sampling,
        1,
        config.warmup,
        tuple(options.items()),
        memory_limit_mb=config.memory_limit_mb,
    )

    def runner(settings: LoadSettings) -> TrialOutcome:
        return run_in_child(spec, settings, config.trial_timeout_s)

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
        doc = {
            "rounds": repeats,
            "min_effect": min_effect,
            "level": level,
            "configs": [{"label": m.label, "settings": m.settings} for m in measured],
            "rows": [r.to_dict() for r in rows],
        }
        click.echo(json.dumps(doc, indent=2))
        return
    _print_comparison(rows, measured, repeats, level)


def _config_file(path: Path, config: StudyConfig) -> comparison.Config:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        settings = LoadSettings.from_dict(data, str(path))
    except OSError as exc:
        _fail(f"{path}: cannot read ({exc.strerror})")
    except tomllib.TOMLDecodeError as exc:
        _fail(f"{path}: not valid TOML: {exc}")
    except SweeperError as exc:
        _fail(str(exc))
    why = invalid_combination(settings)
    if why:
        _fail(f"{path}: {why}")
    unsupported = set(settings.to_dict()) - backend_class(config.backend).supported
    if unsupported:
        _fail(f"{path}: the {config.backend} backend cannot apply {', '.join(sorted(unsupported))}")
    return comparison.Config(path.stem, settings)


def _trial_config(study: optuna.Study, number: int) -> comparison.Config:
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials) or "settings" not in trials[number].user_attrs:
        _fail(f"no measured trial {number} in study {study.study_name!r}")
    return comparison.Config(
        f"trial {number}", LoadSettings(**trials[number].user_attrs["settings"])
    )


def _print_comparison(
    rows: list[comparison.Row],
    measured: list[comparison.ConfigResult],
    repeats: int,
    level: float,
) -> None:
    fmt = {"tok_s": "{:.2f}", "output_tokens": "{:.0f}", "ttft_s": "{:.3f}"}
    first = measured[0].label
    workloads = list(dict.fromkeys(r.workload for r in rows))
    for i, w in enumerate(workloads):
        if i:
            click.echo()
        click.echo(
            f"{w}: median [{level * 100:g}% interval] of {repeats} interleaved rounds; "
            f"differences vs {first}, paired by round"
        )
        table = []
        for m in measured:
            row: dict[str, str] = {"config": m.label}
            for metric, (label, _) in comparison.METRICS.items():
                r = next(x for x in rows if (x.workload, x.label, x.metric) == (w, m.label, metric))
                f = fmt[metric]
                row[label] = (
                    f"{f.format(r.median.estimate)} [{f.format(r.median.low)}-"
                    f"{f.format(r.median.high)}]"
                )
            table.append(row)
            if m.label != first:
                diff_row = {"config": f"  vs {first}"}
                for metric, (label, _) in comparison.METRICS.items():
                    r = next(
                        x for x in rows if (x.workload, x.label, x.metric) == (w, m.label, metric)
                    )
                    assert r.diff is not None
                    diff_row[label] = (
                        f"{r.diff.estimate:+.1%} [{r.diff.low:+.1%}, "
                        f"{r.diff.high:+.1%}] {r.verdict}"
                    )
                table.append(diff_row)
        click.echo(pd.DataFrame(table).to_string(index=False))


@cli.command()
@study_argument
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(study_file: str, storage: str | None, as_json: bool) -> None:
    """Trials done, infeasible ones by reason, and the best per workload."""
    config = _load(study_file)
    study = _open(config, storage)
    summary = results.status(study, [w.name for w in config.workloads])
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(
        f"study {config.name} ({redact(storage or config.storage)}): {_status_line(summary)}"
    )
    base = summary["baseline_trial"]
    click.echo(f"baseline: trial {base}" if base is not None else "baseline: not measured yet")
    for name, best in summary["best"].items():
        click.echo(f"best {name}: {_best_line(best)}")
    click.echo("workers: " + ", ".join(f"{w} ({n} trials)" for w, n in summary["workers"].items()))
    for event in summary["drift_events"]:
        click.echo(f"warning: {_drift_line(event)}")
    if len(summary["machines"]) > 1:
        mixed = ", ".join(f"{m} ({n} trials)" for m, n in summary["machines"].items())
        click.echo(f"machines (mixed hardware): {mixed}")


def _drift_line(event: dict[str, Any]) -> str:
    moved = ", ".join(
        f"{w} {v[0]:+.1f}% tok/s [{v[1]:+.1f}%, {v[2]:+.1f}%]"
        for w, v in event["tok_s_change_pct"].items()
    )
    return (
        f"drift: the baseline re-run in trial {event['check_trial']} moved ({moved}); "
        f"trials {event['since_trial'] + 1}-{event['check_trial'] - 1} may be affected"
    )


def _status_line(s: dict[str, Any]) -> str:
    line = f"{s['trials']} trials, {s['complete']} complete, {s['feasible']} feasible"
    if s["infeasible"]:
        line += "; infeasible: " + ", ".join(f"{r} {n}" for r, n in s["infeasible"].items())
    others = {k: v for k, v in s["states"].items() if k != "complete"}
    if others:
        line += "; " + ", ".join(f"{k} {v}" for k, v in others.items())
    return line


def _best_line(b: dict[str, Any]) -> str:
    delta = "" if b["delta_tok_s_pct"] is None else f" ({b['delta_tok_s_pct']:+.1f}% vs baseline)"
    return f"trial {b['trial']}, {b['tok_s']:.2f} tok/s{delta}, TTFT {b['ttft_s']:.3f} s"


def _open(config: StudyConfig, storage: str | None) -> optuna.Study:
    try:
        return open_study(config, storage)
    except SweeperError as exc:
        _fail(str(exc))


@cli.command()
@study_argument
@storage_option
@click.option("--workload", "-w", metavar="NAME", help="Only this workload.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def pareto(study_file: str, storage: str | None, workload: str | None, as_json: bool) -> None:
    """The non-dominated trials per workload: tok/s up, time to first token down."""
    config = _load(study_file)
    names = [w.name for w in config.workloads]
    if workload is not None and workload not in names:
        _fail(f"unknown workload {workload!r}; this study has: {', '.join(names)}")
    study = _open(config, storage)
    chosen = [w for w in config.workloads if workload in (None, w.name)]
    pts = {w.name: results.points(study, w.name) for w in chosen}
    fronts = {w: results.pareto_front(p) for w, p in pts.items()}
    recs = {
        w.name: recommend_from(w.name, pts[w.name], w.max_tokens, config.recommend) for w in chosen
    }
    if as_json:
        doc = {
            w: {
                "front": [p.to_dict() for p in front],
                "recommended": rec.to_dict() if (rec := recs[w]) else None,
            }
            for w, front in fronts.items()
        }
        click.echo(json.dumps(doc, indent=2))
        return
    searched = list(config.space.dimensions)
    for i, (w, front) in enumerate(fronts.items()):
        if i:
            click.echo()
        click.echo(
            f"{w}: {len(front)} trials on the front (median of {config.repeats} runs [min-max])"
        )
        if not front:
            click.echo("  no feasible trials yet")
            continue
        rec = recs[w]
        click.echo(_table(front, searched, rec.point.trial if rec else None).to_string(index=False))
        if rec is not None:
            click.echo(f"* recommended: {_recommendation_line(rec)}")


def _recommendation_line(r: Recommendation) -> str:
    line = (
        f"trial {r.point.trial}, expected {r.expected_s:.2f} s for {r.reference_tokens:.0f} tokens"
    )
    if r.gain_tok_s_pct is not None:
        med, low, high = r.gain_tok_s_pct
        line += f"; {med:+.1f}% tok/s vs baseline (95% interval {low:+.1f}% to {high:+.1f}%)"
    if r.note:
        line += f"; {r.note}"
    return line


def _table(
    front: list[results.Point], searched: list[str], recommended: int | None = None
) -> pd.DataFrame:
    def spread(d: dict[str, float], fmt: Callable[[float], str]) -> str:
        return f"{fmt(d['median'])} [{fmt(d['min'])}-{fmt(d['max'])}]"

    def noisy(v: float | None, ci: list[float] | None) -> str:
        """A change whose 95% interval includes zero is marked as noise (~)."""
        if v is None:
            return ""
        within_noise = ci is not None and ci[1] <= 0 <= ci[2]
        return f"{'~' if within_noise else ''}{v:+.1f}%"

    rows = []
    for p in front:
        row: dict[str, Any] = {
            "trial": f"{p.trial}{' (baseline)' if p.baseline else ''}"
            + (" *" if p.trial == recommended else ""),
            "tok/s": spread(p.tok_s, lambda v: f"{v:.2f}"),
            "TTFT s": spread(p.ttft_s, lambda v: f"{v:.3f}"),
            "out tok": f"{p.output_tokens:.0f}",
            "Δtok/s": noisy(p.delta_tok_s_pct, p.delta_tok_s_ci),
            "ΔTTFT": noisy(p.delta_ttft_pct, p.delta_ttft_ci),
            "out/base": "" if p.output_ratio is None else f"{p.output_ratio:.2f}",
            "stop": ",".join(p.stop_reasons),
        }
        for name in searched:
            row[name] = p.settings.get(name, "default")
        if p.mismatch:
            row["applied differs"] = ", ".join(f"{k}={v[1]}" for k, v in p.mismatch.items())
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


@cli.command()
@study_argument
@storage_option
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    help="Default: <study name>-report.html next to the study file.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def report(study_file: str, storage: str | None, output: str | None, force: bool) -> None:
    """Write a self-contained HTML report (opens offline)."""
    config = _load(study_file)
    study = _open(config, storage)
    path = Path(output) if output else config.base_dir / f"{config.name}-report.html"
    try:
        report_mod.write_report(study, config, redact(storage or config.storage), path, force)
    except SweeperError as exc:
        _fail(str(exc))
    click.echo(str(path))


@cli.command("export")
@study_argument
@storage_option
@click.option("--workload", "-w", metavar="NAME", help="The workload whose preset to export.")
@click.option(
    "--format", "fmt", type=click.Choice(export.FORMATS), default="json", show_default=True
)
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
    config = _load(study_file)
    names = [w.name for w in config.workloads]
    if all_dir is None and workload is None:
        _fail(f"give --workload NAME ({', '.join(names)}) or --all DIR")
    if workload is not None and workload not in names:
        _fail(f"unknown workload {workload!r}; this study has: {', '.join(names)}")
    if install and fmt != "lmstudio":
        _fail("--install goes with --format lmstudio")
    study = _open(config, storage)
    try:
        if all_dir is not None:
            url = redact(storage or config.storage)
            for path in export.export_all(study, config, url, Path(all_dir), force):
                click.echo(str(path))
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
            click.echo(
                f"installed {target}" + (f" (previous one kept as {backup})" if backup else ""),
                err=True,
            )
        elif fmt == "lmstudio":
            click.echo(
                f"LM Studio reads this from {export.lmstudio_install_path(preset.model)} "
                "(write it there with --install)",
                err=True,
            )
    except SweeperError as exc:
        _fail(str(exc))


@cli.command()
@study_argument
@storage_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; keep it local and tunnel with ssh -L to share.",
)
@click.option("--port", default=8080, show_default=True, type=int)
def dashboard(study_file: str, storage: str | None, host: str, port: int) -> None:
    """Watch the study live in optuna-dashboard."""
    from optuna_dashboard import run_server

    config = _load(study_file)
    study = _open(config, storage)
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
