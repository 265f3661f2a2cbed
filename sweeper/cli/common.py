"""What every command shares: the study argument and --storage, the one error handler, and
the options several commands take."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import click

from sweeper import lock
from sweeper.errors import SweeperError

F = TypeVar("F", bound=Callable[..., Any])


class Failure(click.ClickException):
    """A one-line error: what is wrong and what to do. Exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def fail(message: str) -> NoReturn:
    raise Failure(message)


@contextmanager
def errors() -> Iterator[None]:
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
        with errors():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def measures(verb: str) -> Callable[[F], F]:
    """The command measures: it holds the machine (see ``sweeper.lock``) while it runs."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            what = f"sweeper {verb} {kwargs.get('study_file', '')}".strip()
            with lock.measuring(what, on_wait=lambda line: click.echo(line, err=True)):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
PREFILL_HELP = "Prompt processing speed, until measured (default: 20 x --assume-tok-s)."
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
