"""What guards every request: the Host header (DNS rebinding), the token (a non-loopback
address), cross-site state changes, and paths that must stay inside the studies directory.

Cross-site requests are refused the way Go's ``net/http.CrossOriginProtection`` does it: a
browser sends ``Sec-Fetch-Site`` (or at least ``Origin``) with every POST; a script sends
neither and is not a browser a page could drive. A GET from another site is a page navigation
(a link) or nothing: what an ``<img>`` or a ``fetch`` of another page sends is refused, and the
routes that connect out (to an LM Studio host) refuse even a link from another site."""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from sweeper.errors import SweeperError
from sweeper.service.inputs import TOO_LARGE
from sweeper.settings import shown

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
TOKEN_COOKIE = "sweeper_token"


class PathRefused(SweeperError):
    """A study path outside the studies directory."""


class NotFound(SweeperError):
    """No such sweep, study or workload."""

    status = 404


class CrossSite(SweeperError):
    """A request from another site where only sweeper's own pages may ask."""

    status = 403


OTHER_SITES = ("cross-site", "same-site")


def refuse_other_sites(headers: Headers, what: str) -> None:
    """For a route that makes the service connect out: only sweeper's own pages (or a URL
    typed in) may ask; another site's page, even another port on 127.0.0.1, may not."""
    if headers.get("sec-fetch-site") in OTHER_SITES:
        raise CrossSite(
            f"refused: another site's page asked sweeper to {what}; "
            "open this page from sweeper's own pages"
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def study_path(studies: Path, name: str) -> Path:
    """``name`` as a study file inside ``studies``; anything that would leave it is refused
    (``..``, an absolute path, a symlink out of it)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise PathRefused("not a study name: it is not valid text") from None
    if "\x00" in name:
        raise PathRefused("not a study name: it holds a NUL character")
    candidate = Path(name)
    if not name or candidate.is_absolute() or ".." in candidate.parts or candidate.drive:
        raise PathRefused(f"{name!r}: a study must be a file inside the studies directory")
    if candidate.suffix != ".toml":
        raise PathRefused(f"{name!r}: a study file ends in .toml")
    root = studies.resolve()
    try:
        path = (root / candidate).resolve()
        found = path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, and the like
        found = False
    if not found:
        raise NotFound(f"no study file {shown(name)} in the studies folder")
    if not path.is_relative_to(root):
        raise PathRefused(f"{shown(name)}: leads out of the studies directory")
    return path


def _host_only(host_header: str) -> str:
    try:
        return urlsplit(f"//{host_header}").hostname or ""
    except ValueError:  # "[::1" and the like
        return ""


def _netloc(url: str) -> str | None:
    try:
        return urlsplit(url).netloc
    except ValueError:
        return None


class Guard:
    """ASGI middleware: refuse foreign Host headers, missing tokens and cross-site changes."""

    def __init__(
        self, app: ASGIApp, bound_host: str, token: str | None, max_body: int | None = None
    ) -> None:
        self.app, self.token, self.max_body = app, token, max_body
        wildcard = bound_host in ("0.0.0.0", "::", "")
        self.allowed = (
            None if wildcard else {bound_host.strip("[]"), "localhost", "127.0.0.1", "::1"}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        response = self.check(scope, headers)
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    def check(self, scope: Scope, headers: Headers) -> Response | None:
        host = headers.get("host", "")
        if self.allowed is not None and _host_only(host) not in self.allowed:
            return PlainTextResponse(f"refused: unknown Host {host!r}", status_code=421)
        if self.token is not None:
            given = _token_of(scope, headers)
            if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
                return PlainTextResponse("refused: a token is required", status_code=401)
            query = parse_qs(bytes(scope.get("query_string", b"")).decode())
            if scope["method"] == "GET" and "token" in query:
                # the sign-in URL: the token goes into a cookie and out of the address bar
                rest = urlencode({k: v for k, v in query.items() if k != "token"}, doseq=True)
                path = "/" + str(scope["path"]).lstrip("/")  # never "//host": no open redirect
                redirect = RedirectResponse(path + (f"?{rest}" if rest else ""), status_code=303)
                redirect.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict")
                return redirect
        if self.max_body is not None and _length(headers) > self.max_body:
            # said before the body is read (a body without a length is cut off as it comes)
            if str(scope["path"]).startswith("/api/"):
                return JSONResponse({"error": TOO_LARGE}, status_code=413)
            return PlainTextResponse(TOO_LARGE, status_code=413)
        site = headers.get("sec-fetch-site")
        if site in OTHER_SITES and headers.get("sec-fetch-mode", "navigate") != "navigate":
            # an <img>, a script's fetch or a form's subresource from another site's page
            return PlainTextResponse("refused: a cross-site request", status_code=403)
        if scope["method"] not in SAFE_METHODS:
            origin = headers.get("origin")
            if site is not None and site not in ("same-origin", "none"):
                return PlainTextResponse("refused: a cross-site request", status_code=403)
            if site is None and origin is not None and _netloc(origin) != host:
                return PlainTextResponse("refused: a cross-origin request", status_code=403)
        return None


def _length(headers: Headers) -> int:
    try:
        return int(headers.get("content-length", "0"))
    except ValueError:
        return 0


def _token_of(scope: Scope, headers: Headers) -> str | None:
    auth = headers.get("authorization", "")
    if auth.startswith("Bearer "):
        return auth[len("Bearer ") :]
    tokens = parse_qs(bytes(scope.get("query_string", b"")).decode()).get("token")
    if tokens:
        return tokens[0]
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == TOKEN_COOKIE:
            return value
    return None
