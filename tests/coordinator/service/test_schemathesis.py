"""Schemathesis against the live server's OpenAPI schema: generated requests, valid and invalid, with a
token of a role allowed on each endpoint; no answer may be a server error (5xx) or undocumented."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

from coordinator.service import ACCESS, PUBLIC, Role, create_app
from tests.coordinator.service.conftest import fresh_key_holder, make_service, running

TOKEN_OF = {Role.COMMISSIONER: "commissioner", Role.DATA_SCIENTIST: "data_scientist", Role.COORDINATOR_ADMIN: "admin"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, registry_file):
    base = tmp_path_factory.mktemp("schemathesis")
    with fresh_key_holder(base / "keyholder") as key_holder:
        service = make_service(base / "home", registry_file, key_holder=key_holder)
        with running(create_app(service.coordinator)) as service.base_url:
            yield service


@pytest.fixture(scope="module")
def api_schema(served):
    return schemathesis.openapi.from_url(f"{served.base_url}/api/v1/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")
CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance]


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_no_server_error(case, served):
    roles = ACCESS.get((case.method.upper(), case.path), frozenset({Role.COORDINATOR_ADMIN}))
    role = None if roles is PUBLIC else min(roles, key=lambda r: r.value)
    headers = {} if role is None else served.headers(TOKEN_OF[role])
    response = case.call(base_url=served.base_url, headers=headers)
    case.validate_response(response, checks=CHECKS)
