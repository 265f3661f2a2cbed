"""The web app: each page is a data function from ``pages`` drawn by a template, with its JSON
twin under ``/api/`` (the same dict, so the API and the pages cannot drift). Forms and scripts
post to the same handlers; a form gets a page or a redirect, a script gets JSON."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import plotly
from anyio import to_thread
from starlette.applications import Starlette
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from sweeper import config as config_file
from sweeper import export, plan
from sweeper.backends import BACKENDS
from sweeper.installs import Installs
from sweeper.service import forms, inputs, pages
from sweeper.service.boundary import Boundary
from sweeper.service.events import Hub
from sweeper.service.inputs import NUMBER, TEXT
from sweeper.service.queue import CONFIRM, Queue, Sweep
from sweeper.service.security import Guard, NotFound, refuse_other_sites, study_path
from sweeper.service.shared import Rigs
from sweeper.service.supervisor import Supervisor, timeout_seconds

log = logging.getLogger("sweeper")
HERE = Path(__file__).parent
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
Handler = Callable[[Request], Awaitable[dict[str, Any]]]
#: what the new-sweep page's address may carry
NEW_QUERY = {
    "study": TEXT,
    "trials": NUMBER,
    "budget": TEXT,
    "assume_tok_s": NUMBER,
    "assume_load_s": NUMBER,
    "models": TEXT,
    "backend": TEXT,
    "host": TEXT,
    "model": TEXT,
}
QUEUE_FORM = {"study": TEXT, "trials": NUMBER, "budget": TEXT}

__all__ = ["NotFound", "create_app"]


class Service:
    """What the app holds: the studies directory, the queue, its supervisor, the live hub."""

    def __init__(self, studies: Path, state: Path, machine: str) -> None:
        self.studies = studies.resolve()
        self.machine = machine
        self.hub = Hub()
        self.queue = Queue(state / "queue.json")
        self.supervisor = Supervisor(self.queue, state / "logs", self.hub.publish)
        self.installs = Installs(state / "installs.json")
        self.rigs = Rigs(
            self.queue,
            machine,
            lambda: [str(p) for p in pages.study_files(self.studies)],
            lambda: self.hub.publish({"event": "changed", "elsewhere": True}),
        )

    def sweep(self, sweep_id: str) -> Sweep:
        s = self.queue.get(sweep_id)
        if s is None:
            raise NotFound(f"no sweep {sweep_id!r}")
        return s

    def study(self, name: str) -> Path:
        return study_path(self.studies, name)


def create_app(
    studies: Path,
    state: Path,
    bound_host: str = "127.0.0.1",
    token: str | None = None,
    supervise: bool = True,
    machine: str | None = None,
) -> Starlette:
    """``machine``: the name this rig's sweeps carry on other rigs' pages (the host name)."""
    service = Service(studies, state, machine or socket.gethostname())
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["spread"] = pages.spread_text
    templates.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=1, default=str)
    boundary = Boundary(templates, state, service.studies)

    def page(template: str, data_fn: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def html(request: Request) -> Response:
            async def respond() -> Response:
                data = await data_fn(request)
                return templates.TemplateResponse(request, template, data)

            return await boundary.run(request, respond)

        return html

    def api(data_fn: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            async def respond() -> Response:
                return JSONResponse(await data_fn(request))

            return await boundary.run(request, respond)

        return handle

    def action(data_fn: Handler, go: Callable[[dict[str, Any]], str]) -> Any:
        """A POST from a form (redirect to the page to see) or a script (JSON)."""

        async def handle(request: Request) -> Response:
            async def respond() -> Response:
                data = await data_fn(request)
                if request.url.path.startswith("/api/"):
                    return JSONResponse(data)
                return RedirectResponse(go(data), status_code=303)

            return await boundary.run(request, respond)

        return handle

    async def studies_data(request: Request) -> dict[str, Any]:
        return await to_thread.run_sync(
            pages.studies_page, service.studies, service.queue, service.installs, service.machine
        )

    async def sweep_data(request: Request) -> dict[str, Any]:
        sweep = service.sweep(request.path_params["id"])
        return await to_thread.run_sync(pages.sweep_page, service.queue, sweep)

    async def results_data(request: Request) -> dict[str, Any]:
        path = service.study(request.path_params["file"])
        data = await to_thread.run_sync(pages.results_page, path)
        return data | {"installs": service.installs.for_study(path.name)}

    async def new_data(request: Request) -> dict[str, Any]:
        q = inputs.query(request, NEW_QUERY)
        files = [p.name for p in pages.study_files(service.studies)]
        data: dict[str, Any] = {"files": files, "form": q, "fields": forms.FIELDS}
        data["backends"] = list(BACKENDS)
        data["gguf"] = await to_thread.run_sync(pages.gguf_files, service.studies)
        data["efforts"], data["margin"] = forms.EFFORTS, f"{plan.TIMEOUT_MARGIN:g}"
        if q.get("models"):  # asked for: discovering LM Studio can take a moment
            refuse_other_sites(request.headers, "connect to an LM Studio server")
            data |= await to_thread.run_sync(pages.lmstudio_models, str(q.get("host", "")))
        # "your current settings", where the backend can say (LM Studio's default config)
        data["current"], data["current_why"] = forms.current_settings(
            str(q.get("backend", "")), str(q.get("model", ""))
        )
        if q.get("study"):
            path = service.study(str(q["study"]))
            config = config_file.load(str(path))
            trials = forms.positive_int(q.get("trials"), "trials")
            budget = str(q.get("budget", "")).strip() or None
            timeout_s = timeout_seconds(budget) if budget else None
            assumed = (
                forms.positive_float(
                    q.get("assume_tok_s"), "assumed tok/s", plan.MAX_ASSUMED_TOK_S
                ),
                forms.positive_float(
                    q.get("assume_load_s"), "assumed load time", plan.MAX_ASSUMED_LOAD_S
                ),
            )
            data |= await to_thread.run_sync(pages.plan_of, config, timeout_s, trials, *assumed)
        return data

    async def queue_sweep(request: Request) -> dict[str, Any]:
        form = await inputs.body(request, QUEUE_FORM)
        path = service.study(str(form.get("study", "")))
        config_file.load(str(path))  # a broken file is said now, not at 3 a.m.
        trials = forms.positive_int(form.get("trials"), "trials")
        budget = str(form.get("budget") or "").strip() or None
        seconds = timeout_seconds(budget) if budget else None
        until = budget is not None and budget.lower().startswith("until")
        deadline = time.time() + seconds if until and seconds else None
        sweep = Sweep(str(path), trials, budget, deadline=deadline, machine=service.machine)
        service.queue.add(sweep)
        service.hub.publish({"event": "queued", "sweep": sweep.id})
        return sweep.to_dict()

    async def reconfirm(request: Request) -> dict[str, Any]:
        """`sweeper confirm STUDY` queued like a sweep (never started by the service itself:
        it would evict the model the user is working with)."""
        path = service.study(request.path_params["file"])
        config_file.load(str(path))
        sweep = service.queue.add(Sweep(str(path), action=CONFIRM, machine=service.machine))
        service.hub.publish({"event": "queued", "sweep": sweep.id})
        return sweep.to_dict()

    async def stop_sweep(request: Request) -> dict[str, Any]:
        sweep = service.sweep(request.path_params["id"])
        service.supervisor.stop(sweep)
        return sweep.to_dict()

    async def resume_sweep(request: Request) -> dict[str, Any]:
        sweep = service.sweep(request.path_params["id"])
        service.supervisor.resume(sweep)
        return sweep.to_dict()

    async def new_study(request: Request) -> dict[str, Any]:
        form = await inputs.body(request, forms.NEW_STUDY)
        path = await to_thread.run_sync(forms.write_study, service.studies, form)
        return {"file": path.name}

    async def install(request: Request) -> dict[str, Any]:
        path = service.study(request.path_params["file"])
        return await to_thread.run_sync(service.installs.install, path, request.path_params["w"])

    async def undo(request: Request) -> dict[str, Any]:
        return await to_thread.run_sync(service.installs.undo, request.path_params["n"])

    async def preset_data(request: Request) -> dict[str, Any]:
        """A preset as JSON (the download's twin): its file name and its text."""
        path = service.study(request.path_params["file"])
        fmt = request.path_params["fmt"]
        if fmt not in export.FORMATS:
            raise NotFound(f"unknown format {fmt!r}; formats: {', '.join(export.FORMATS)}")
        text, name = await to_thread.run_sync(
            forms.render_preset, path, request.path_params["w"], fmt
        )
        return {"file": name, "format": fmt, "text": text}

    async def preset(request: Request) -> Response:
        async def respond() -> Response:
            data = await preset_data(request)
            text, name = data["text"], data["file"]
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)  # a header is Latin-1, a name may not be
            disposition = f'attachment; filename="{safe}"'
            headers = {"content-disposition": disposition}
            return Response(text, media_type="text/plain", headers=headers)

        return await boundary.run(request, respond)

    async def events(request: Request) -> Response:
        return StreamingResponse(service.hub.stream(), media_type="text/event-stream")

    async def plotly_js(request: Request) -> Response:
        return FileResponse(PLOTLY_JS, media_type="application/javascript")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        import asyncio

        service.hub.loop = asyncio.get_running_loop()
        service.rigs.start()
        if supervise:
            service.supervisor.start()
        try:
            yield
        finally:
            service.hub.close()
            if supervise:
                await to_thread.run_sync(service.supervisor.close)
            await to_thread.run_sync(service.rigs.close)

    def to_sweep(d: dict[str, Any]) -> str:
        return f"/sweeps/{d['id']}"

    routes = [
        Route("/", page("studies.html", studies_data)),
        Route("/new", page("new.html", new_data)),
        Route("/studies", action(new_study, lambda d: f"/new?study={d['file']}"), methods=["POST"]),
        Route("/sweeps", action(queue_sweep, to_sweep), methods=["POST"]),
        Route("/sweeps/{id}", page("sweep.html", sweep_data)),
        Route("/sweeps/{id}/stop", action(stop_sweep, to_sweep), methods=["POST"]),
        Route("/studies/{file}/reconfirm", action(reconfirm, to_sweep), methods=["POST"]),
        Route("/sweeps/{id}/resume", action(resume_sweep, to_sweep), methods=["POST"]),
        Route("/studies/{file}", page("results.html", results_data)),
        Route("/studies/{file}/presets/{w}/{fmt}", preset),
        Route(
            "/studies/{file}/install/{w}",
            action(install, lambda d: f"/studies/{d['study']}"),
            methods=["POST"],
        ),
        Route(
            "/installs/{n}/undo", action(undo, lambda d: f"/studies/{d['study']}"), methods=["POST"]
        ),
        Route("/static/plotly.min.js", plotly_js),
        Route("/api/studies", api(studies_data)),
        Route("/api/new", api(new_data)),
        Route("/api/studies", action(new_study, str), methods=["POST"]),
        Route("/api/sweeps", api(studies_data)),
        Route("/api/sweeps", action(queue_sweep, str), methods=["POST"]),
        Route("/api/sweeps/{id}", api(sweep_data)),
        Route("/api/sweeps/{id}/stop", action(stop_sweep, str), methods=["POST"]),
        Route("/api/studies/{file}/reconfirm", action(reconfirm, str), methods=["POST"]),
        Route("/api/sweeps/{id}/resume", action(resume_sweep, str), methods=["POST"]),
        Route("/api/studies/{file}", api(results_data)),
        Route("/api/studies/{file}/presets/{w}/{fmt}", api(preset_data)),
        Route("/api/studies/{file}/install/{w}", action(install, str), methods=["POST"]),
        Route("/api/installs/{n}/undo", action(undo, str), methods=["POST"]),
        Route("/api/events", events),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={413: boundary.too_large})
    app.state.service = service
    # Starlette's body limit cuts off a body sent without a length as it comes (the 413 handler
    # answers); the guard, outside it, refuses a declared length over the limit at once
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=inputs.MAX_BODY)
    app.add_middleware(Guard, bound_host=bound_host, token=token, max_body=inputs.MAX_BODY)
    return app
