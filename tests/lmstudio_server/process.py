"""The LM Studio test server in a process of its own on a chosen port, for tests of an LM Studio
that goes away: killed (as LM Studio quits, crashes or updates itself) and started again on the
same port, possibly saying another version."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

READY = "LM Studio test server on "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``with ServerProcess() as lms:``; ``lms.kill()`` and ``lms.start()`` again."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, app_version: str = "0.4.21", timeout_s: float = 60) -> None:
        argv = [sys.executable, str(Path(__file__).parent), "--port", str(self.port)]
        deadline = time.monotonic() + timeout_s
        while True:  # the port of a killed server may take a moment to be free again
            self.process = subprocess.Popen(
                [*argv, "--app-version", app_version],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert self.process.stdout is not None
            line = self.process.stdout.readline()
            if line.startswith(READY):
                return
            self.process.wait()
            self.process.stdout.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the LM Studio test server did not start on {self.port}")
            time.sleep(0.2)

    def kill(self) -> None:
        """As LM Studio crashing or being quit: no goodbye on any socket."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
