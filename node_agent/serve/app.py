"""``create_app``: the clinic's scoring API and the doctor's workstation page, in one FastAPI app."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from federation.pages import SHARED_STATIC
from models.errors import TaskSpecError
from models.spec import LabelSpec, load_task
from node_agent.serve.access import ACCESS, API_PREFIX, PUBLIC, check_access_table
from node_agent.serve.advisor import AdvisorHolder, AdvisorProvider
from node_agent.serve.deps import authorize
from node_agent.serve.errors import install_error_handlers
from node_agent.serve.inputs import build_inputs, example_patient
from node_agent.serve.middleware import BodyLimit, SecurityHeaders
from node_agent.serve.records import DecisionLog
from node_agent.serve.routes import (
    admin,
    decisions,
    meta,
    model,
    quality,
    referrals,
    score,
)
from node_agent.serve.tokens import TokenStore

__all__ = ["STATIC_DIR", "create_app"]

STATIC_DIR = Path(__file__).parent / "static"
DESCRIPTION = """The clinic's own scoring service: first-visit data in, an advisory assessment out.
Runs on the node agent; patient data never leave the clinic. Every endpoint but `/health` needs a site
token (`Authorization: Bearer <token>`); which role may call what is listed on each endpoint."""


def _outcome_labels(holder: AdvisorHolder) -> list[LabelSpec]:
    """The labels a recorded outcome may carry: the served task's, then each other served task's."""
    advisor = holder.current
    labels = [advisor.spec.label]
    for task in advisor.models:
        if task != advisor.spec.name:
            try:
                labels.append(load_task(task).label)
            except TaskSpecError:
                continue  # a task without a built-in spec has no outcome field
    return labels


def create_app(
    holder: AdvisorHolder,
    *,
    site_dir: Path,
    tokens: TokenStore | None = None,
    max_batch: int = 256,
    provider: AdvisorProvider | None = None,
    busy_timeout: float = 5.0,
    personalisation: bool = True,
) -> FastAPI:
    """The scoring API under ``/api/v1`` and the workstation page at ``/``.

    Parameters
    ----------
    holder
        Holds the advisor in use; ``POST /api/v1/admin/reload`` swaps in ``provider()``'s answer.
    site_dir
        The site's folder: decisions and outcomes go to its ``site.duckdb``.
    tokens
        The site's access tokens (default: ``TokenStore.for_site(site_dir)``).
    max_batch
        Most patients in one ``/score/batch`` call; more is a 413.
    provider
        Returns the newest approved advisor; without one, reload answers 409.
    personalisation
        Serve the site's personalised models where they match the production versions
        (``node_agent.personalised``; a site switches them off with ``fenji node personalised off``).
    """
    spec = holder.current.spec
    inputs = build_inputs(spec, _outcome_labels(holder), max_batch=max_batch)
    app = FastAPI(title="Fenji node agent: scoring API", version="1", description=DESCRIPTION,
                  openapi_url=f"{API_PREFIX}/openapi.json", docs_url=None, redoc_url=None,  # the docs pages need a CDN
                  lifespan=_lifespan)
    app.state.personalisation = {}
    if personalisation:
        provider = _personalised(site_dir, holder, provider, app.state)
    app.state.holder, app.state.provider = holder, provider
    app.state.tokens = tokens or TokenStore.for_site(site_dir)
    app.state.records = DecisionLog(site_dir, task=spec.name, busy_timeout=busy_timeout)

    routers = [score.router(inputs, max_batch=max_batch), meta.public, meta.router,  # the busiest first
               decisions.router(inputs, example_patient(spec)), model.router, quality.router, admin.router,
               referrals.router(inputs)]
    api_routes = [route for router in routers for route in router.routes if isinstance(route, APIRoute)]
    check_access_table(api_routes, authorize)
    _document_roles(api_routes)
    for router in routers:
        app.include_router(router)
    install_error_handlers(app)

    @app.get("/", include_in_schema=False)
    def workstation() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")

    # The page's own files, then those it shares with the console (the model-card renderer).
    app.mount("/static", StaticFiles(directory=STATIC_DIR, packages=[SHARED_STATIC]), name="static")
    app.add_middleware(BodyLimit, max_bytes=64 * 1024 + 4 * 1024 * max_batch)
    app.add_middleware(SecurityHeaders)
    return app


def _personalised(site_dir: Path, holder: AdvisorHolder, provider: AdvisorProvider | None,
                  state: object) -> AdvisorProvider | None:
    """Serve the site's personalised models now and after every reload; ``state.personalisation``
    says per task which model answers and why."""
    from node_agent.personalised import apply_personalisation

    def overlay(advisor: object) -> object:
        served, state.personalisation = apply_personalisation(site_dir, advisor)  # type: ignore[attr-defined]
        return served

    served = overlay(holder.current)
    if served is not holder.current:
        holder.swap(served)  # type: ignore[arg-type]
    if provider is None:
        return None
    return lambda: overlay(provider())  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Once the models are loaded, move everything alive to the collector's permanent generation.

    The process holds millions of long-lived objects (PyTorch, pandas, the models); a full garbage
    collection walks all of them and paused the server for 100-200 ms under load (seen as the p99 of
    the serving benchmark). Frozen, they are never walked again; objects of requests are collected
    as before. (Instagram's ``gc.freeze``, Python >= 3.7.)
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _document_roles(routes: list[APIRoute]) -> None:
    for route in routes:
        roles = ACCESS[(next(iter(route.methods)), route.path)]
        who = "no token needed" if roles is PUBLIC else ", ".join(sorted(r.value for r in roles))
        if "**Roles:**" not in route.description:  # the module-level routers are shared by every app
            route.description = f"{route.description}\n\n**Roles:** {who}"
