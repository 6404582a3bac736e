"""Every endpoint x every role (and no token, a bad token, basic auth): allowed, 401 or 403. The
endpoints come from the app's routes; the expectation from the code's ACCESS table and from a table
written out here independently."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute

from coordinator.service import ACCESS, PUBLIC
from coordinator.service.app import ROUTERS
from tests.coordinator.service.conftest import TASK

POLICY_TASK = "referral_risk"

C, S, A = "commissioner", "data_scientist", "coordinator_admin"
EVERYONE = {C, S, A}
TOKEN_OF = {C: "commissioner", S: "data_scientist", A: "admin"}

# Written by hand from the issue, not derived from ACCESS: a change to either must be deliberate.
EXPECTED: dict[tuple[str, str], set[str] | None] = {
    ("GET", "/api/v1/health"): None,
    ("GET", "/api/v1/me"): EVERYONE,
    ("GET", "/api/v1/accounts"): {A},
    ("POST", "/api/v1/accounts"): {A},
    ("DELETE", "/api/v1/accounts/{account_id}"): {A},
    ("GET", "/api/v1/models"): EVERYONE,
    ("GET", "/api/v1/models/{task}/versions"): EVERYONE,
    ("GET", "/api/v1/models/{task}/versions/{version}/rounds"): EVERYONE,
    ("GET", "/api/v1/models/{task}/versions/{version}/curves"): EVERYONE,  # like the per-site metrics
    ("GET", "/api/v1/models/{task}/versions/{version}/card"): EVERYONE,
    ("POST", "/api/v1/models/{task}/versions/{version}/approve"): {C},
    ("POST", "/api/v1/models/{task}/rollback"): {C},
    ("GET", "/api/v1/models/{task}/versions/{version}/tier-policy"): EVERYONE,
    ("POST", "/api/v1/models/{task}/versions/{version}/tier-policy"): {C},
    ("GET", "/api/v1/promotions"): EVERYONE,
    ("GET", "/api/v1/audit"): {C, A},
    ("GET", "/api/v1/audit/verify"): EVERYONE,  # the verdict only; the trail itself is {C, A}
    ("POST", "/api/v1/audit/anchor"): {A},
    ("POST", "/api/v1/jobs"): {S, A},
    ("GET", "/api/v1/jobs"): EVERYONE,
    ("GET", "/api/v1/jobs/{job_id}"): EVERYONE,
    ("POST", "/api/v1/jobs/{job_id}/cancel"): EVERYONE,  # a data scientist only their own (test_jobs)
    ("POST", "/api/v1/queries"): {S},
    ("GET", "/api/v1/queries"): {S, A},
    ("GET", "/api/v1/queries/{query_id}"): {S, A},
    ("POST", "/api/v1/queries/{query_id}/cancel"): {S, A},  # a data scientist only their own (test_queries)
    ("GET", "/api/v1/sites"): EVERYONE,  # the decision-quality review only for commissioners (test_sites)
    ("GET", "/api/v1/sites/{site_id}"): EVERYONE,
    ("POST", "/api/v1/surveillance"): {C, S},  # the commission runs surveillance, data scientists too
    ("GET", "/api/v1/surveillance"): EVERYONE,
    ("GET", "/api/v1/surveillance/{run_id}"): EVERYONE,
}
SURVEILLANCE = {"task": TASK, "start": "2025-09-01", "end": "2025-09-28"}
ROUTES = sorted({(method, route.path) for router in ROUTERS for route in router.routes
                 if isinstance(route, APIRoute) for method in route.methods})


def test_the_routes_the_code_table_and_the_expected_table_agree():
    assert set(ROUTES) == set(ACCESS) == set(EXPECTED)
    assert {e: (None if ACCESS[e] is PUBLIC else {r.value for r in ACCESS[e]}) for e in ACCESS} == EXPECTED


def test_every_documented_endpoint_is_guarded_as_the_table_says(service):
    schema = httpx.get(f"{service.base_url}/api/v1/openapi.json").json()
    documented = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    assert documented == set(EXPECTED)
    for (method, path), roles in EXPECTED.items():
        assert ("security" in schema["paths"][path][method.lower()]) == (roles is not None), (method, path)


def _prepare(service, path: str) -> dict[str, object]:
    """What a valid request to ``path`` needs: an account to revoke, a version to roll back to, a model
    card, a site."""
    if path.endswith("/card"):
        service.coordinator.registry.client.update_model_version(f"fenji-{TASK}", "2", description="# Model card")
    if path.startswith("/api/v1/sites"):
        from coordinator.service.sites import Sighting, record

        with service.coordinator.sessions() as session:
            record(session, {"clinic_a": Sighting(last_seen="2026-01-01T00:00:00+00:00", report={"rows-from": 100.0})},
                   job_id=1, task=TASK)
            session.commit()
    if path == "/api/v1/models/{task}/rollback":
        for version in ("1", "3"):  # 1 then 3 applied: a rollback to 1 is valid
            for who in ("commissioner", "commissioner2"):
                with service.client(who) as client:
                    client.post(f"/api/v1/models/{TASK}/versions/{version}/approve", json={"reason": "fine"})
        assert service.alias() == "3"
    if path.endswith("/tier-policy"):  # a version with a real bundle, of the task whose policy the clinics apply
        from tests.coordinator.service.bundle_registry import (
            add_version,
            untrained_models,
        )

        client = service.coordinator.registry.client
        client.create_registered_model(f"fenji-{POLICY_TASK}")
        experiment = client.create_experiment("fenji-policy", artifact_location=(Path(service.env["FENJI_HOME"]) / "artifacts").as_uri())
        assert add_version(client, experiment, Path(service.env["FENJI_HOME"]), POLICY_TASK, untrained_models()[POLICY_TASK]) == "1"
    return {}


def call(service, method: str, path: str, headers: dict[str, str], n: int) -> httpx.Response:
    with httpx.Client(base_url=service.base_url, headers=headers, timeout=60) as client:
        if path == "/api/v1/accounts/{account_id}":
            with service.client("admin") as admin:
                victim = admin.post("/api/v1/accounts", json={"name": f"victim {n}", "role": S}).json()
            return client.delete(path.format(account_id=victim["account"]["id"]))
        if path.startswith("/api/v1/jobs/{job_id}"):  # a queued job of its own (no engine runs it here)
            with service.client("data_scientist") as scientist:  # whose data scientist may cancel it
                job = scientist.post("/api/v1/jobs", json={"task": TASK, "rounds": 2}).json()
            return client.request(method, path.format(job_id=job["id"]))
        if path.startswith("/api/v1/queries/{query_id}"):  # a queued query of its own (no engine runs it here)
            with service.client("data_scientist") as scientist:
                query = scientist.post("/api/v1/queries", json={"task": TASK, "query": {"kind": "count"}}).json()
            return client.request(method, path.format(query_id=query["id"]))
        if path == "/api/v1/surveillance/{run_id}":  # a queued run of its own (no engine runs it here)
            with service.client("commissioner") as commissioner:
                run = commissioner.post("/api/v1/surveillance", json=SURVEILLANCE).json()
            return client.request(method, path.format(run_id=run["id"]))
        if path.endswith("/tier-policy"):
            edit = {"policy": {"tertiary": {"triage_at_most": 1, "risk_at_least": 0.5},
                               "county": {"triage_at_most": 2, "risk_at_least": 0.15}}, "reason": "stricter"}
            return client.request(method, path.format(task=POLICY_TASK, version="1"),
                                  json=edit if method == "POST" else None)
        url = path.format(task=TASK, version="2", site_id="clinic_a")
        bodies = {"/api/v1/accounts": {"name": f"new {n}", "role": S}, "/api/v1/jobs": {"task": TASK, "rounds": 2},
                  "/api/v1/queries": {"task": TASK, "query": {"kind": "count"}}, "/api/v1/surveillance": SURVEILLANCE,
                  "/api/v1/models/{task}/versions/{version}/approve": {"reason": "better everywhere"},
                  "/api/v1/models/{task}/rollback": {"version": "1", "reason": "version 3 fails clinic_b"}}
        return client.request(method, url, json=bodies.get(path) if method == "POST" else None)


@pytest.mark.parametrize("endpoint", ROUTES, ids=lambda e: f"{e[0]} {e[1]}")
def test_role_matrix(service, endpoint):
    """What the server does for each caller is what both tables say (refusals first: they change nothing)."""
    method, path = endpoint
    _prepare(service, path)
    allowed = EXPECTED[endpoint]
    callers = {"no token": {}, "bad token": {"Authorization": "Bearer fco_not-a-token"},
               "basic auth": {"Authorization": "Basic YWRtaW46YWRtaW4="}}
    callers |= {role: service.headers(TOKEN_OF[role]) for role in sorted(EVERYONE)}
    order = sorted(callers, key=lambda who: allowed is None or who in allowed)  # allowed callers last
    results = {who: call(service, method, path, callers[who], n).status_code for n, who in enumerate(order)}
    expected = {}
    for who, status in results.items():
        if allowed is None or who in allowed:
            expected[who] = status if 200 <= status < 300 else "2xx"
        else:
            expected[who] = 403 if who in EVERYONE else 401
    assert results == expected
