"""`sweeper serve` as a child of this process, for scripts (benchmarks, screenshots): on a free
port, started like every process sweeper starts (it dies with its parent), stopped at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from sweeper.errors import SweeperError
from sweeper.system import Program


def scratch(prefix: str) -> Path:
    """A new studies directory in a temporary folder (its ``home`` beside it)."""
    studies = Path(tempfile.mkdtemp(prefix=prefix)) / "studies"
    studies.mkdir()
    return studies


def chromium() -> str:
    """Debian's Chromium, for the scripts that drive a browser (Playwright's own download is
    not used: it needs the internet)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise SweeperError("needs Debian's chromium (apt-get install chromium)")
    return found


@contextlib.contextmanager
def serving(studies: Path, home: Path, timeout_s: float = 60) -> Iterator[tuple[str, Program]]:
    """(its URL, the program) while the block runs; the service's queue and lock in ``home``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "sweeper", "serve", "--studies", str(studies)]
    env = os.environ | {"SWEEPER_HOME": str(home)}
    program = Program([*argv, "--port", str(port)], home / "serve.log", env=env)
    program.start()
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + timeout_s
        while True:
            try:
                httpx.get(url + "/api/studies").raise_for_status()
                break
            except httpx.HTTPError:
                if not program.alive() or time.monotonic() > end:
                    log = home / "serve.log"
                    raise SweeperError(f"sweeper serve did not start; see {log}") from None
                time.sleep(0.3)
        yield url, program
    finally:
        program.stop()
