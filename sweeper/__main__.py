"""``python -m sweeper``: the command line, for a child started by the service."""

from sweeper.cli import main

main()
