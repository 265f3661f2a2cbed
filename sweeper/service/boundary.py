"""The service's one error boundary: a ``SweeperError`` is the user's to fix, and becomes a
4xx page (or JSON under ``/api/``) with its message; anything else is a bug in sweeper, and
becomes a 500 page that says so and where its traceback went (the terminal and the service's
error log, ``service-errors.log`` beside the queue)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.templating import Jinja2Templates

from sweeper.errors import SweeperError
from sweeper.service.inputs import MAX_BODY

log = logging.getLogger("sweeper")
ERROR_LOG = "service-errors.log"


def relative(message: str, studies: Path) -> str:
    """A message with the studies folder's files named as the studies page names them (the
    folder's absolute path is nobody's business on a page)."""
    return message.replace(f"{studies}{os.sep}", "")


def status_of(exc: SweeperError) -> int:
    status = getattr(exc, "status", 400)
    return status if isinstance(status, int) else 400


class Boundary:
    def __init__(self, templates: Jinja2Templates, state: Path, studies: Path) -> None:
        self.templates, self.studies = templates, studies
        self.log_path = state / ERROR_LOG

    def error(self, request: Request, message: str, status: int, title: str = "") -> Response:
        message = relative(message, self.studies)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status)
        context = {"message": message, "title": title or "Cannot do that"}
        return self.templates.TemplateResponse(request, "error.html", context, status_code=status)

    def bug(self, request: Request, exc: BaseException) -> Response:
        when = dt.datetime.now().isoformat(timespec="seconds")
        text = "".join(traceback.format_exception(exc))
        log.error("a bug in sweeper serving %s %s:\n%s", request.method, request.url.path, text)
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as out:
                out.write(f"--- {when} {request.method} {request.url.path}\n{text}\n")
            where = f"{self.log_path} and the terminal running sweeper serve"
        except OSError:
            where = "the terminal running sweeper serve"
        message = (
            f"a bug in sweeper: this request failed ({type(exc).__name__}) at {when}. "
            f"Its traceback is in {where}; please report it with that traceback."
        )
        return self.error(request, message, 500, "A bug in sweeper")

    async def run(self, request: Request, respond: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await respond()
        except HTTPException:
            raise  # Starlette's own (413): answered by too_large
        except SweeperError as exc:
            return self.error(request, str(exc), status_of(exc))
        except Exception as exc:
            return self.bug(request, exc)

    async def too_large(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status != 413:
            return self.error(request, str(exc), status)
        limit = f"{MAX_BODY // (1024 * 1024)} MiB"
        return self.error(
            request, f"the request body is larger than the {limit} sweeper reads", 413
        )
