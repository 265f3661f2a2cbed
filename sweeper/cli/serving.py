"""``sweeper serve``: the local web app (``sweeper.service``)."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import click

from sweeper.cli.common import errors, fail


@click.command()
@click.option("--host", default="127.0.0.1", help="Address to listen on (loopback: no token).")
@click.option("--port", default=8765, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option(
    "--studies",
    "studies_dir",
    default=None,
    metavar="DIR",
    help="The study files the service lists and runs [default: the studies folder in "
    "SWEEPER_HOME, ~/.sweeper/studies, made with the example studies on first use].",
)
@click.option(
    "--machine",
    default=None,
    metavar="NAME",
    help="The name other rigs sharing a study show this rig's sweeps under (default: the host "
    "name).",
)
def serve(host: str, port: int, studies_dir: str | None, machine: str | None) -> None:
    """Plan, queue, watch and finish sweeps in the browser; one measurement at a time."""
    import uvicorn
    from filelock import FileLock, Timeout

    from sweeper import distribution, lock
    from sweeper.service.app import create_app
    from sweeper.service.security import is_loopback

    studies = Path(studies_dir) if studies_dir else distribution.default_studies()
    if not studies.is_dir():
        fail(f"no studies directory {studies_dir!r}; give one with --studies DIR")
    state = lock.home() / "service"
    state.mkdir(parents=True, exist_ok=True)
    only_one = FileLock(state / "serve.lock")
    try:
        only_one.acquire(timeout=0)
    except Timeout:
        fail(f"another `sweeper serve` runs on this machine (its queue is {state})")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family) as probe:
            port = probe.getsockname()[1]
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port")
    token = None if is_loopback(host) else secrets.token_urlsafe(24)
    with errors():
        app = create_app(studies, state, host, token, machine=machine)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    click.echo(f"sweeper serve: open {url} (studies in {studies}; Ctrl-C stops)", err=True)
    if token:
        click.echo("a token is required on this address: it is in the URL above", err=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        only_one.release()
