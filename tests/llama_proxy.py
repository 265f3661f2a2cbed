"""A test instrument standing in for llama-server (a study's ``server_binary``): it starts the real
llama-server on another port, passes every request through, and at the first request to
``--kill-at PATH`` kills the real server and exits, as a llama-server crashing there would.

    python tests/llama_proxy.py --kill-at /props --real /path/to/llama-server -- <its arguments>

``wrapper_script`` writes an executable that runs it, to give as the binary.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOP = {"connection", "transfer-encoding", "keep-alive", "content-length"}


def wrapper_script(folder: Path, kill_at: str, real: str) -> Path:
    """An executable that runs this proxy in front of ``real``, killing it at ``kill_at``."""
    path = folder / f"llama-server-killed-at{kill_at.replace('/', '-')}"
    path.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" '
        f'--kill-at "{kill_at}" --real "{real}" -- "$@"\n',
        encoding="utf-8",
    )
    path.chmod(0o755)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphaned server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-at", required=True)
    parser.add_argument("--real", required=True)
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args()
    args = [a for a in opts.args if a != "--"]
    if "--port" not in args:  # --version and the like: the real binary answers
        os.execv(opts.real, [opts.real, *args])
    at = args.index("--port")
    port, inner = int(args[at + 1]), _free_port()
    args[at + 1] = str(inner)
    real = subprocess.Popen([opts.real, *args], preexec_fn=_die_with_parent)

    def end(code: int) -> None:
        real.kill()
        real.wait()
        os._exit(code)

    signal.signal(signal.SIGTERM, lambda *_: end(0))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def _pass(self, method: str) -> None:
            if self.path.split("?")[0] == opts.kill_at:
                print(f"llama_proxy: killing llama-server at {self.path}", flush=True)
                end(1)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            conn = http.client.HTTPConnection("127.0.0.1", inner, timeout=600)
            try:
                conn.request(method, self.path, body or None, dict(self.headers))
                reply = conn.getresponse()
                data = reply.read()
            except OSError:
                self.send_error(503, "loading")
                return
            self.send_response(reply.status)
            for k, v in reply.getheaders():
                if k.lower() not in HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._pass("GET")

        def do_POST(self) -> None:
            self._pass("POST")

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
