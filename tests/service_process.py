"""`sweeper serve` as a real process for the tests that need one (the browser's walk, a crash):
started on a free port, stopped with SIGTERM or killed, and every process it started, looked
up while it ran, checked to be gone after it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from conftest import FAKE_STUDY


def study(name: str, model: str, trials: int) -> str:
    return (
        FAKE_STUDY.replace('name = "fake"', f'name = "{name}"')
        .replace('model = "fake-model"', f'model = "{model}"')
        .replace("trials = 4", f"trials = {trials}")
    )


class Service:
    def __init__(self, studies: Path, env: dict[str, str]) -> None:
        self.studies, self.env = studies, env
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "sweeper", "serve", "--studies", str(self.studies)]
        self.proc = subprocess.Popen(
            [*argv, "--port", str(self.port)], env=self.env, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stderr is not None
        assert self.proc.stderr.readline().startswith(f"sweeper serve: open {self.url}/")
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                httpx.get(self.url + "/api/studies").raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("the service did not answer")

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()

    def kill(self) -> None:
        """A crash: SIGKILL, no chance to stop its sweep."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def descendants(self) -> list[psutil.Process]:
        """Every process the service has started and that runs now (sweeps, their workers)."""
        assert self.proc is not None
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def api(self, path: str) -> Any:
        return httpx.get(self.url + path).json()

    def wait(self, sweep: str, states: set[str], timeout_s: float = 90) -> dict[str, Any]:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            data: dict[str, Any] = self.api(f"/api/sweeps/{sweep}")
            if data["sweep"]["state"] in states:
                return data
            time.sleep(0.3)
        raise AssertionError(f"{sweep} never reached {states}")


def ours(studies: Path) -> list[psutil.Process]:
    """Live processes working on these studies (sweeps, workers)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(studies) in cmd and p.info["status"] != psutil.STATUS_ZOMBIE and "serve" not in cmd:
            found.append(p)
    return found


def alive(processes: list[psutil.Process], timeout_s: float = 10) -> list[psutil.Process]:
    """Those of ``processes`` still running after ``timeout_s`` (a child dying with its parent
    takes a moment on a watchdog)."""
    end = time.monotonic() + timeout_s
    while True:
        left = [p for p in processes if _running(p)]
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.1)


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
