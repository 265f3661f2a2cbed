"""The ``sweeper`` command and ``python -m sweeper``, with nothing imported until it runs.

A trial's worker is a spawned interpreter, and spawning first runs the parent's main script
again (as ``__mp_main__``): the installed ``sweeper`` script, which imports this module. Were
the command line imported here, every worker would pay for optuna, SQLAlchemy and the reports
(about a second per trial on 2 cores) before it could load a model.
"""

from __future__ import annotations


def main() -> None:
    from sweeper.cli import main as command_line

    command_line()


if __name__ == "__main__":
    main()
