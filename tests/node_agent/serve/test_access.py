"""Every endpoint x every role (and no token): allowed, 401 or 403, checked against the code's ACCESS
table and against an expected table written out here independently."""

from __future__ import annotations

import httpx
import pytest

from node_agent.serve import ACCESS, PUBLIC, Role
from tests.node_agent.serve.test_score import PATIENT

D, A, S, C = "doctor", "site_admin", "data_scientist", "commissioner"
EVERYONE = {D, A, S, C}

# Written by hand from the issue, not derived from ACCESS: a change to either must be deliberate.
EXPECTED: dict[tuple[str, str], set[str] | None] = {
    ("GET", "/api/v1/health"): None,  # public
    ("GET", "/api/v1/me"): EVERYONE,
    ("GET", "/api/v1/schema/form"): EVERYONE,
    ("POST", "/api/v1/score"): {D},
    ("POST", "/api/v1/score/batch"): {D},
    ("POST", "/api/v1/decisions"): {D},
    ("GET", "/api/v1/decisions"): {A},
    ("GET", "/api/v1/decisions/pending"): {D, A},
    ("GET", "/api/v1/quality"): {A},
    ("POST", "/api/v1/outcomes"): {D, A},
    ("GET", "/api/v1/schema/outcomes"): EVERYONE,
    ("POST", "/api/v1/alerts"): {D},
    ("POST", "/api/v1/referrals"): {D},
    ("GET", "/api/v1/referrals"): {D, A},
    ("GET", "/api/v1/referrals/{decision_id}"): {D, A},
    ("POST", "/api/v1/referrals/{decision_id}/status"): {D},
    ("GET", "/api/v1/model"): EVERYONE,
    ("GET", "/api/v1/model/{task}/card"): EVERYONE,
    ("POST", "/api/v1/admin/reload"): {A},
    ("GET", "/api/v1/admin/tokens"): {A},
    ("POST", "/api/v1/admin/tokens"): {A},
    ("DELETE", "/api/v1/admin/tokens/{token_id}"): {A},
}


def test_the_code_table_matches_the_expected_table():
    assert {endpoint: roles_in_code(endpoint) for endpoint in ACCESS} == EXPECTED


def test_every_documented_endpoint_is_in_the_table(served):
    schema = httpx.get(f"{served.base_url}/api/v1/openapi.json").json()
    documented = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    assert documented == set(EXPECTED)
    for (method, path), roles in EXPECTED.items():
        operation = schema["paths"][path][method.lower()]
        assert ("security" in operation) == (roles is not None), (method, path)


def call(served, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    """A valid request for each endpoint, so an allowed role gets a success, not a 422."""
    with served.client() as client:
        client.headers.update(headers)
        if path == "/api/v1/decisions" and method == "POST":
            body = {"encounter_id": "MZ-access", "inputs": PATIENT, "decision": "treat_here",
                    "assessment": {"models": {"referral_risk": {"name": "m", "version": "1"}},
                                   "referral_risk": 0.1, "tier": "community", "triage_level": "5"}}
            return client.post(path, json=body)
        if path == "/api/v1/outcomes":
            (decision_id,) = served.site_rows("SELECT decision_id FROM decisions LIMIT 1")[0]
            return client.post(path, json={"decision_id": decision_id, "referred_up": "0"})
        if path.startswith("/api/v1/referrals") and (method, path) != ("GET", "/api/v1/referrals"):
            return call_referrals(served, method, path, client)
        if path == "/api/v1/admin/tokens/{token_id}":
            victim = served.tokens.create(role=Role.DOCTOR, name="to revoke").info.token_id
            return client.delete(path.format(token_id=victim))
        bodies = {"/api/v1/score": PATIENT, "/api/v1/score/batch": {"patients": [PATIENT]},
                  "/api/v1/alerts": {"inputs": PATIENT, "triage_level": "3", "referral_risk": 0.2},
                  "/api/v1/admin/tokens": {"name": "new", "role": "doctor"}}
        url = path.format(task=next(iter(served.holder.current.models)))
        return client.request(method, url, json=bodies.get(path) if method == "POST" else None)


def call_referrals(served, method: str, path: str, client: httpx.Client) -> httpx.Response:
    """A new decision to refer (by a doctor), then the call: open its referral, or read or move it."""
    body = {"encounter_id": "MZ-access-referral", "inputs": PATIENT, "decision": "refer", "referred_tier": "county",
            "assessment": {"models": {"referral_risk": {"name": "m", "version": "1"}}, "referral_risk": 0.3,
                           "tier": "county", "triage_level": "3"}}
    with served.client(D) as doctor:
        decision_id = doctor.post("/api/v1/decisions", json=body).raise_for_status().json()["decision_id"]
        if path == "/api/v1/referrals":
            return client.post(path, json={"decision_id": decision_id})
        doctor.post("/api/v1/referrals", json={"decision_id": decision_id}).raise_for_status()
    url = path.format(decision_id=decision_id)
    return client.post(url, json={"status": "received"}) if method == "POST" else client.get(url)


def roles_in_code(endpoint: tuple[str, str]) -> set[str] | None:
    roles = ACCESS[endpoint]
    return None if roles is PUBLIC else {r.value for r in roles}


@pytest.mark.parametrize("endpoint", sorted(set(EXPECTED) | set(ACCESS)), ids=lambda e: f"{e[0]} {e[1]}")
@pytest.mark.parametrize("table", ["code", "expected"])
def test_role_matrix(fresh, endpoint, table):
    """What the server does for each caller is what the table says: the code's, and the one above."""
    method, path = endpoint
    if path == "/api/v1/outcomes":  # needs a decision to attach to
        call(fresh, "POST", "/api/v1/decisions", fresh.headers(D))
    allowed = roles_in_code(endpoint) if table == "code" else EXPECTED[endpoint]
    results = {}
    for role in [None, *sorted(EVERYONE)]:
        results[role] = call(fresh, method, path, fresh.headers(role)).status_code
    results["bad token"] = call(fresh, method, path, {"Authorization": "Bearer fj_not-a-token"}).status_code
    results["basic auth"] = call(fresh, method, path, {"Authorization": "Basic ZG9jdG9yOmRvY3Rvcg=="}).status_code
    expected = {}
    for who in results:
        if allowed is None or who in allowed:
            expected[who] = results[who] if results[who] in (200, 201) else "2xx"
        elif who in EVERYONE:
            expected[who] = 403
        else:
            expected[who] = 401
    assert results == expected
