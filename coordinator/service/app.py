"""``create_app``: the city's coordinator API under ``/api/v1`` (OpenAPI at ``/api/v1/openapi.json``)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute

from coordinator.service.access import ACCESS, API_PREFIX, PUBLIC, check_access_table
from coordinator.service.deps import Coordinator, authorize
from coordinator.service.errors import install_error_handlers
from coordinator.service.routes import (
    accounts,
    audit,
    jobs,
    meta,
    models,
    policy,
    queries,
    sites,
    surveillance,
)
from coordinator.service.routes.console import mount_console

__all__ = ["ROUTERS", "create_app"]

ROUTERS = [meta.public, meta.router, accounts.router, models.router, policy.router, audit.router, jobs.router,
           queries.router, sites.router, surveillance.router]

DESCRIPTION = """The city's coordinator: model versions with the metrics each clinic released, promotion to
production under four eyes (two different commissioners, each with a reason), rollback, tier-policy edits
(each a new version, approved the same way), and an audit
chain that the key holder countersigns after every change; the sites with the report each sent with its
last run. Every endpoint but `/health` needs an
account's token (`Authorization: Bearer <token>`); which role may call what is listed on each endpoint."""


def create_app(coordinator: Coordinator) -> FastAPI:
    """The API over ``coordinator``'s database, registry and key holder (see ``Coordinator``)."""
    app = FastAPI(title="Fenji coordinator", version="1", description=DESCRIPTION,
                  openapi_url=f"{API_PREFIX}/openapi.json", docs_url=None, redoc_url=None)  # docs pages need a CDN
    app.state.coordinator = coordinator
    routes = [route for router in ROUTERS for route in router.routes if isinstance(route, APIRoute)]
    check_access_table(routes, authorize)
    for route in routes:
        roles = ACCESS[(next(iter(route.methods)), route.path)]
        who = "no token needed" if roles is PUBLIC else ", ".join(sorted(r.value for r in roles))
        if "**Roles:**" not in route.description:  # the module-level routers are shared by every app
            route.description = f"{route.description}\n\n**Roles:** {who}"
    for router in ROUTERS:
        app.include_router(router)
    install_error_handlers(app)
    mount_console(app)  # after the API: the page is not an endpoint of ACCESS
    return app
