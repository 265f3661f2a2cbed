"""The `sweeper` command: parse, call the library, format. Progress to stderr, results to stdout.
One module per group of commands: ``sweeping`` (run, confirm, compare) and ``results``
(status, pareto, report, export, dashboard); ``common`` holds what they share."""

from __future__ import annotations

import io
import logging
import sys
import warnings

import click
import optuna

from sweeper import __version__
from sweeper.cli import results, serving, sweeping
from sweeper.distribution import NAME

log = logging.getLogger("sweeper")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="sweeper", message=f"%(prog)s %(version)s ({NAME})")
@click.option("-v", "--verbose", count=True, help="Log more (-v: each trial, -vv: each run).")
def cli(verbose: int) -> None:
    """Find the fastest load settings for a local LLM, per workload."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel([logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)])
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


for command in (
    sweeping.run,
    sweeping.confirm_cmd,
    sweeping.compare,
    sweeping.plan_cmd,
    results.status,
    results.pareto,
    results.report,
    results.export_cmd,
    results.undo,
    results.dashboard,
    serving.serve,
):
    cli.add_command(command)


def main() -> None:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for stream in (sys.stdout, sys.stderr):
        # A pipe or a file on a Windows code page (cp1252, cp932) cannot encode every prompt,
        # model or workload name: write what it cannot as "?" rather than fail mid-report
        if isinstance(stream, io.TextIOWrapper) and stream.encoding.lower() != "utf-8":
            stream.reconfigure(errors="replace")
    cli()
