"""Commands that read a study: status, pareto, report, export (and install, undo), dashboard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from sweeper import config as config_file
from sweeper import export, fronts, records, studyrecord, terminal
from sweeper.backends import backend_class
from sweeper.cli.common import errors, fail, json_option, study_command
from sweeper.files import write_atomic
from sweeper.installs import NOTES, Installs
from sweeper.recommend import for_study
from sweeper.storage import open_study, redact


@click.command()
@study_command
@json_option
def status(study_file: str, storage: str | None, as_json: bool) -> None:
    """Trials done, infeasible ones by reason, and the recommendation per workload."""
    config = config_file.load(study_file)
    study = open_study(config, storage)
    names = [w.name for w in config.workloads]
    summary: dict[str, Any] = {"study": study.study_name}
    summary |= fronts.status(records.load(study), names, studyrecord.drift_events(study))
    views = for_study(study, config)
    summary["recommendations"] = {
        w: v.recommendation.to_dict() for w, v in views.items() if v.recommendation
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(terminal.status_text(summary, redact(storage or config.storage)))
    click.echo(terminal.recommendations_text(views, "recommended "))


@click.command()
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


@click.command()
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
    from sweeper import report_html as report_mod  # pandas and plotly: only for a report

    report_mod.write_report(study, config, redact(storage or config.storage), path, force)
    click.echo(str(path))


@click.command("export")
@study_command
@click.option("--workload", "-w", metavar="NAME", help="The workload whose preset to export.")
@click.option(
    "--format", "fmt", type=click.Choice(export.FORMATS), default="json", metavar="FORMAT"
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
    help="lmstudio format: also install a confirmed preset as LM Studio's per-model default "
    "config (an existing one is backed up first; `sweeper undo` puts it back).",
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
        fail(f"give --workload NAME ({', '.join(w.name for w in config.workloads)}) or --all DIR")
    if install and fmt != "lmstudio":
        fail("--install goes with --format lmstudio")
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
        row = Installs().install(Path(study_file), workload, storage)
        kept = f" (previous one kept as {row['backup']})" if row["backup"] else ""
        click.echo(f"installed {row['target']}{kept} as install {row['n']}", err=True)
        click.echo(f"note: {NOTES}; `sweeper undo {row['n']}` does it", err=True)
    elif fmt == "lmstudio":
        click.echo(
            f"LM Studio reads this from {backend_class('lmstudio').install_path(preset.model)} "
            "(install it there with --install once it is confirmed)",
            err=True,
        )


@click.command()
@click.argument("number", required=False)
def undo(number: str | None) -> None:
    """Undo install NUMBER (the CLI's or the service's: one history); without it, list the
    installs still in place."""
    installs = Installs()
    with errors():
        if number is None:
            for rows in installs.active().values():
                for r in rows:
                    click.echo(
                        f"{r['n']}\t{r['when']}\t{r['study']} {r['workload']}\t{r['target']}"
                    )
            return
        row = installs.undo(number)
    put = f"put back {row['backup']}" if row["backup"] else "removed it (there was no file)"
    click.echo(f"undid install {row['n']}: {row['target']}: {put}", err=True)


@click.command()
@study_command
@click.option("--host", default="127.0.0.1", metavar="HOST", help="Address to bind.")
@click.option("--port", default=8080, type=int, metavar="PORT")
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
