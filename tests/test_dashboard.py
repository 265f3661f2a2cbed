from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import WriteStudy, run_fake


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dashboard_serves_the_study_on_localhost(write_study: WriteStudy) -> None:
    path = write_study()
    run_fake(path, trials=2)
    port = free_port()
    sweeper = Path(sys.executable).parent / "sweeper"
    proc = subprocess.Popen(
        [str(sweeper), "dashboard", str(path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = ""
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert '"study_name": "fake"' in body
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert f"optuna-dashboard for fake on http://127.0.0.1:{port}/" in err
