"""Who may call what: the one role table, read by the app's guard and by the tests.

``ACCESS`` maps every API endpoint (method, path template) to the roles allowed to call it, or to
``PUBLIC``. ``create_app`` refuses to start if a route is missing from the table, the table names a
route that does not exist, or a route's guard disagrees with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

from fastapi.routing import APIRoute

__all__ = ["ACCESS", "API_PREFIX", "PUBLIC", "Role", "allowed_roles", "check_access_table"]

API_PREFIX = "/api/v1"


class Role(str, Enum):
    COMMISSIONER = "commissioner"
    DATA_SCIENTIST = "data_scientist"
    COORDINATOR_ADMIN = "coordinator_admin"


PUBLIC = None  # no token needed (the health check only)
_ANY = frozenset(Role)
_COMMISSIONER, _ADMIN = frozenset({Role.COMMISSIONER}), frozenset({Role.COORDINATOR_ADMIN})
_SUBMITTERS = frozenset({Role.DATA_SCIENTIST, Role.COORDINATOR_ADMIN})

# Commissioners govern models (approve, roll back) and read the audit trail; coordinator admins run
# the service (accounts, anchoring) and read the audit trail; data scientists read model versions.
ACCESS: dict[tuple[str, str], frozenset[Role] | None] = {
    ("GET", "/api/v1/health"): PUBLIC,
    ("GET", "/api/v1/me"): _ANY,
    ("GET", "/api/v1/accounts"): _ADMIN,
    ("POST", "/api/v1/accounts"): _ADMIN,
    ("DELETE", "/api/v1/accounts/{account_id}"): _ADMIN,
    ("GET", "/api/v1/models"): _ANY,
    ("GET", "/api/v1/models/{task}/versions"): _ANY,
    ("GET", "/api/v1/models/{task}/versions/{version}/rounds"): _ANY,
    ("GET", "/api/v1/models/{task}/versions/{version}/curves"): _ANY,  # as the per-site metrics
    ("GET", "/api/v1/models/{task}/versions/{version}/card"): _ANY,
    ("POST", "/api/v1/models/{task}/versions/{version}/approve"): _COMMISSIONER,
    ("POST", "/api/v1/models/{task}/rollback"): _COMMISSIONER,
    # A tier-policy edit registers a new version (commissioners only); it then needs two approvals.
    ("GET", "/api/v1/models/{task}/versions/{version}/tier-policy"): _ANY,
    ("POST", "/api/v1/models/{task}/versions/{version}/tier-policy"): _COMMISSIONER,
    ("GET", "/api/v1/promotions"): _ANY,
    ("GET", "/api/v1/audit"): _COMMISSIONER | _ADMIN,
    # Whether the chain is intact (no entry in it) is everyone's to check: data scientists too.
    ("GET", "/api/v1/audit/verify"): _ANY,
    ("POST", "/api/v1/audit/anchor"): _ADMIN,
    # Data scientists and coordinator admins submit training jobs; everyone follows them. A data
    # scientist cancels only their own jobs (checked in coordinator.service.jobs.cancel); commissioners
    # and coordinator admins may stop any.
    ("POST", "/api/v1/jobs"): _SUBMITTERS,
    ("GET", "/api/v1/jobs"): _ANY,
    ("GET", "/api/v1/jobs/{job_id}"): _ANY,
    ("POST", "/api/v1/jobs/{job_id}/cancel"): _ANY,
    # Everyone sees the sites; what each role sees of their reports is in coordinator.service.sites.
    ("GET", "/api/v1/sites"): _ANY,
    ("GET", "/api/v1/sites/{site_id}"): _ANY,
    # Only data scientists ask statistics questions of the sites; admins may read them (they run the service).
    # A data scientist cancels only their own queued queries (coordinator.service.queries.cancel); admins any.
    ("POST", "/api/v1/queries"): frozenset({Role.DATA_SCIENTIST}),
    ("GET", "/api/v1/queries"): _SUBMITTERS,
    ("GET", "/api/v1/queries/{query_id}"): _SUBMITTERS,
    ("POST", "/api/v1/queries/{query_id}/cancel"): _SUBMITTERS,
    # The commission runs syndromic surveillance and reads its alerts, as do data scientists; admins may read.
    ("POST", "/api/v1/surveillance"): _COMMISSIONER | {Role.DATA_SCIENTIST},
    ("GET", "/api/v1/surveillance"): _ANY,
    ("GET", "/api/v1/surveillance/{run_id}"): _ANY,
}


def allowed_roles(method: str, path: str) -> frozenset[Role] | None:
    """The roles allowed on an endpoint, None if public; KeyError for one missing from ``ACCESS``."""
    return ACCESS[(method.upper(), path)]


def check_access_table(routes: Iterable[APIRoute], guard: Callable[..., Any]) -> None:
    """Raise RuntimeError unless ``ACCESS`` lists exactly these endpoints and every endpoint that is
    not public depends on ``guard``."""
    routes = list(routes)
    endpoints = {(method, route.path) for route in routes for method in route.methods}
    missing, stale = endpoints - ACCESS.keys(), ACCESS.keys() - endpoints
    if missing or stale:
        raise RuntimeError(f"ACCESS table out of date: unlisted {sorted(missing)}, unknown {sorted(stale)}")
    for route in routes:
        guarded = any(dep.call is guard for dep in route.dependant.dependencies)
        for method in route.methods:
            if guarded != (ACCESS[(method, route.path)] is not PUBLIC):
                raise RuntimeError(f"{method} {route.path}: its guard does not match the ACCESS table")
