"""A throwaway PostgreSQL cluster on a loopback port (Debian's postgresql package).

Tests that need it use the ``postgres_url`` fixture; `.ci/run` installs the package where it is
missing and sets SWEEPER_REQUIRE_POSTGRES, so CI fails instead of skipping without it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import pytest


def _bindir() -> str | None:
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(os.path.realpath(found))
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return dirs[-1] if dirs else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    bindir = _bindir()
    if bindir is None:
        if os.environ.get("SWEEPER_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is required here (SWEEPER_REQUIRE_POSTGRES is set)")
        pytest.skip("no PostgreSQL on this machine (apt-get install postgresql); CI installs it")
    root = tempfile.mkdtemp(prefix="sweeper-pg-")
    os.chmod(root, 0o755)
    data = os.path.join(root, "data")
    # initdb refuses to run as root: run the server as Debian's postgres user then
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
    port = _free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "sweeper", "--no-sync")
    run(
        f"{bindir}/pg_ctl",
        "-D",
        data,
        "-w",
        "-l",
        os.path.join(root, "log"),
        "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
        "start",
    )
    try:
        run(f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "sweeper", "sweeper")
        # the form the README shows (SQLAlchemy 2.1 takes psycopg 3 for it)
        yield f"postgresql://sweeper:not-a-secret@127.0.0.1:{port}/sweeper"
    finally:
        run(f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
