"""Who may call what: the one role table, read by the app's guard and by the tests.

``ACCESS`` maps every API endpoint (method, path template) to the roles allowed to call it, or to
``PUBLIC``. ``create_app`` refuses to start if a route is missing from the table, the table names a
route that does not exist, or a route's guard disagrees with it: no endpoint is unguarded by omission.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

from fastapi.routing import APIRoute

__all__ = ["ACCESS", "API_PREFIX", "PUBLIC", "Role", "allowed_methods", "allowed_roles", "check_access_table"]

API_PREFIX = "/api/v1"


class Role(str, Enum):
    DOCTOR = "doctor"
    SITE_ADMIN = "site_admin"
    DATA_SCIENTIST = "data_scientist"
    COMMISSIONER = "commissioner"


PUBLIC = None  # no token needed (only the health check); an empty role set would mean "nobody"
_ANY = frozenset(Role)
_DOCTOR, _ADMIN = frozenset({Role.DOCTOR}), frozenset({Role.SITE_ADMIN})

# Doctors see patients (score, record decisions and outcomes); site admins run the node (tokens,
# model reloads) and read the decision log; data scientists and commissioners read model versions
# and cards only - never a patient's data.
ACCESS: dict[tuple[str, str], frozenset[Role] | None] = {
    ("GET", "/api/v1/health"): PUBLIC,
    ("GET", "/api/v1/me"): _ANY,
    ("GET", "/api/v1/schema/form"): _ANY,
    ("POST", "/api/v1/score"): _DOCTOR,
    ("POST", "/api/v1/score/batch"): _DOCTOR,
    ("POST", "/api/v1/decisions"): _DOCTOR,
    ("GET", "/api/v1/decisions"): _ADMIN,
    ("GET", "/api/v1/decisions/pending"): _DOCTOR | _ADMIN,
    ("POST", "/api/v1/outcomes"): _DOCTOR | _ADMIN,
    ("GET", "/api/v1/schema/outcomes"): _ANY,
    ("POST", "/api/v1/alerts"): _DOCTOR,
    ("POST", "/api/v1/referrals"): _DOCTOR,
    ("GET", "/api/v1/referrals"): _DOCTOR | _ADMIN,
    ("GET", "/api/v1/referrals/{decision_id}"): _DOCTOR | _ADMIN,
    ("POST", "/api/v1/referrals/{decision_id}/status"): _DOCTOR,
    ("GET", "/api/v1/quality"): _ADMIN,
    ("GET", "/api/v1/model"): _ANY,
    ("GET", "/api/v1/model/{task}/card"): _ANY,
    ("POST", "/api/v1/admin/reload"): _ADMIN,
    ("GET", "/api/v1/admin/tokens"): _ADMIN,
    ("POST", "/api/v1/admin/tokens"): _ADMIN,
    ("DELETE", "/api/v1/admin/tokens/{token_id}"): _ADMIN,
}


def allowed_roles(method: str, path: str) -> frozenset[Role] | None:
    """The roles allowed on an endpoint, None if public; KeyError for one missing from ``ACCESS``."""
    return ACCESS[(method.upper(), path)]


def allowed_methods(path: str) -> list[str]:
    """The methods ``ACCESS`` lists for a concrete request path (for a 405's Allow header)."""
    return sorted({method for method, template in ACCESS
                   if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), path)})


def check_access_table(routes: Iterable[APIRoute], guard: Callable[..., Any]) -> None:
    """Raise RuntimeError unless ``ACCESS`` lists exactly these API endpoints and every endpoint that
    is not public depends on ``guard`` (the dependency that enforces the table)."""
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
