"""Where LM Studio's server is: the one parser of a user's address for it (the CLI's --host,
the study file's ``host``, the service's new-study form) and the probe that says, in one line,
when what answers there is nothing, something else, or too slow."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from sweeper import distribution
from sweeper.errors import BackendUnavailable, StudyFileError

#: LM Studio's usual local server, tried after the SDK's own port discovery.
DEFAULT_PORT = 1234
DEFAULT_HOST = f"127.0.0.1:{DEFAULT_PORT}"
#: Seconds LM Studio's greeting may take (the SDK's own probe allows 1 s; a busy rig, more).
PROBE_TIMEOUT_S = 5.0


def sdk() -> Any:
    try:
        import lmstudio
    except ImportError as exc:
        raise BackendUnavailable(
            f"the lmstudio SDK is not installed; {distribution.install_hint('lmstudio')}"
        ) from exc
    return lmstudio


def _unreachable(host: str | None) -> BackendUnavailable:
    where = f"at {host}" if host else f"on this machine (SDK port discovery, then {DEFAULT_HOST})"
    return BackendUnavailable(
        f"LM Studio is not reachable {where}; start its server with `lms server start` "
        "(or in LM Studio: Developer > Start Server), or give --host HOST:PORT"
    )


def parse_host(text: str) -> str:
    """LM Studio's server address as ``host:port``, from what a user copies: LM Studio's own
    ``http://127.0.0.1:1234``, ``127.0.0.1:1234``, ``localhost:1234``, ``[::1]:1234``, or a
    bare host (LM Studio's default port 1234). Strict: the SDK pastes it into its URLs, so a
    path, a query or credentials would end up in them."""
    given = text.strip()
    rest = given
    for scheme in ("http://", "ws://"):
        if rest.lower().startswith(scheme):
            rest = rest[len(scheme) :]
    rest = rest.removesuffix("/")
    host, port = rest, str(DEFAULT_PORT)
    if rest.startswith("["):
        inside, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise _not_a_host(given)
        host, port = f"[{inside}]", tail[1:] or port
        address = inside
    elif rest.count(":") > 1:  # a bare IPv6 address: no port can follow it unbracketed
        host, address = f"[{rest}]", rest
    else:
        if rest.count(":") == 1:
            host, port = rest.split(":")
        address = host
    try:
        ipaddress.ip_address(address)
    except ValueError:
        if not _HOSTNAME.fullmatch(address):
            raise _not_a_host(given) from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise _not_a_host(given)
    return f"{host.lower()}:{int(port)}"


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


def _not_a_host(text: str) -> StudyFileError:
    return StudyFileError(
        f"{text!r} is not an address of LM Studio's server: give host:port as its Developer "
        "page shows it, e.g. http://127.0.0.1:1234, localhost:1234 or [::1]:1234"
    )


def probe(host: str, timeout_s: float | None = None) -> None:
    """Check that LM Studio answers at ``host`` (its greeting, as the SDK probes it), each way
    of not doing so its own one line."""
    import httpx

    timeout_s = PROBE_TIMEOUT_S if timeout_s is None else timeout_s
    url = f"http://{host}/lmstudio-greeting"
    try:
        reply = httpx.get(url, timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 2.0)))
    except httpx.ConnectError:
        raise _unreachable(host) from None
    except httpx.TimeoutException:
        raise BackendUnavailable(
            f"something at {host} accepted the connection but did not answer within "
            f"{timeout_s:g} s; is LM Studio's server (still) starting, or is another program "
            "listening on that port? Give LM Studio's address with --host HOST:PORT"
        ) from None
    except httpx.HTTPError as exc:
        raise BackendUnavailable(f"LM Studio at {host} did not answer: {exc}") from None
    try:
        greeting = reply.json()
    except ValueError:
        greeting = None
    if reply.status_code != 200 or not isinstance(greeting, dict) or not greeting.get("lmstudio"):
        kind = reply.headers.get("content-type", "no content type").split(";")[0]
        raise BackendUnavailable(
            f"{host} answers, but not as LM Studio (HTTP {reply.status_code}, {kind}): another "
            "program holds that port; give LM Studio's server address (its Developer page shows "
            "it) with --host HOST:PORT"
        )


def reachable(host: str) -> bool:
    """Whether LM Studio answers at ``host`` now."""
    try:
        probe(host)
    except BackendUnavailable:
        return False
    return True


def find_host(host: str | None) -> str:
    """The API host to use: the given one (see ``parse_host``) if LM Studio answers there,
    else LM Studio's usual ones."""
    lms = sdk()
    if host is not None:
        where = parse_host(host)
        probe(where)
        return where
    found = lms.Client.find_default_local_api_host()
    if found:
        return str(found)
    if reachable(DEFAULT_HOST):
        return DEFAULT_HOST
    raise _unreachable(None)
