"""Statistics queries through the API: listed newest first with their state, a queued one cancelled (by
its data scientist or an admin, never by another data scientist nor a commissioner) and then skipped by
the worker, a running one refused with 409 (the runner answers a query in one call it cannot
interrupt), and every change in the audit chain. The runner
here is the seam's own, as in test_jobs; Flower answers queries for real in tests/fenji/test_sdk.py."""

from __future__ import annotations

import threading
import time

import pytest

from coordinator.service import Role
from coordinator.service.accounts import add_account
from tests.coordinator.service.conftest import TASK

COUNT = {"task": TASK, "query": {"kind": "count"}}
SURVEILLANCE = {"task": TASK, "start": "2025-09-01", "end": "2025-09-28"}


def submit(service, who: str = "data_scientist", body: dict | None = None, path: str = "/api/v1/queries") -> dict:
    with service.client(who) as client:
        response = client.post(path, json=body or COUNT)
    assert response.status_code == 201, response.text
    return response.json()


def cancel(service, who: str, query_id: int):
    with service.client(who) as client:
        return client.post(f"/api/v1/queries/{query_id}/cancel")


def listed(service, who: str = "data_scientist", **params) -> list[tuple[int, str]]:
    with service.client(who) as client:
        response = client.get("/api/v1/queries", params=params)
    assert response.status_code == 200, response.text
    return [(q["id"], q["status"]) for q in response.json()]


def audit(service, query_id: int) -> list[tuple[str, str]]:
    with service.client("admin") as client:
        entries = client.get("/api/v1/audit", params={"limit": 1000}).json()["entries"]
        assert client.get("/api/v1/audit/verify").json()["ok"]
    return [(e["action"], e["actor"]) for e in entries if e["details"].get("query_id") == query_id]


def test_a_queued_query_is_cancelled_listed_with_its_state_and_audited(service):
    first = submit(service)
    run = submit(service, "commissioner", SURVEILLANCE, "/api/v1/surveillance")
    second = submit(service, body={"task": TASK, "query": {"kind": "mean", "column": "age"}})
    assert listed(service) == [(second["id"], "queued"), (first["id"], "queued")]  # newest first; no surveillance run
    assert listed(service, "admin", limit=1) == [(second["id"], "queued")]

    response = cancel(service, "data_scientist", first["id"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "cancelled" and body["finished_at"] and body["started_at"] is None
    assert body["reason"] == "cancelled by test data_scientist before it started"
    assert listed(service) == [(second["id"], "queued"), (first["id"], "cancelled")]
    assert audit(service, first["id"]) == [("query-submitted", "test data_scientist"),
                                           ("query-cancelled", "test data_scientist")]
    # An admin cancels anyone's; what has ended is not cancelled twice, and nothing more is audited.
    assert cancel(service, "admin", second["id"]).json()["status"] == "cancelled"
    again = cancel(service, "data_scientist", first["id"])
    assert again.status_code == 409 and "was cancelled already" in again.json()["detail"]
    assert [a for a, _ in audit(service, first["id"])] == ["query-submitted", "query-cancelled"]
    assert audit(service, second["id"])[-1] == ("query-cancelled", "admin")
    # A surveillance run is not a statistics query: not listed above, and not cancelled here.
    refused = cancel(service, "admin", run["id"])
    assert refused.status_code == 404 and "is a surveillance run" in refused.json()["detail"]
    with service.client("commissioner") as client:
        assert client.get(f"/api/v1/surveillance/{run['id']}").json()["status"] == "queued"
    assert cancel(service, "data_scientist", 999_999).status_code == 404


def test_a_data_scientist_cannot_cancel_another_ones_query(service):
    with service.coordinator.sessions() as session:
        service.tokens["other"] = add_account(session, name="other scientist", role=Role.DATA_SCIENTIST,
                                              actor="test")[1]
    query = submit(service)
    refused = cancel(service, "other", query["id"])
    assert refused.status_code == 403
    assert "submitted by test data_scientist" in refused.json()["detail"]
    assert listed(service, "other") == [(query["id"], "queued")]  # everyone's listed, as the jobs are
    assert [a for a, _ in audit(service, query["id"])] == ["query-submitted"]
    assert cancel(service, "data_scientist", query["id"]).status_code == 200


def test_a_commissioner_neither_lists_nor_cancels_queries(service):
    """Statistics questions are the data scientists' (ACCESS: admins may read and cancel them too); the
    commission's own federated view is surveillance. A refusal changes nothing and audits nothing."""
    query = submit(service)
    with service.client("commissioner") as client:
        refusals = [client.get("/api/v1/queries"), client.post(f"/api/v1/queries/{query['id']}/cancel")]
    for refused in refusals:
        assert refused.status_code == 403, refused.text
        assert refused.json()["detail"] == ("role 'commissioner' may not call this endpoint "
                                            "(allowed: coordinator_admin, data_scientist)")
    assert listed(service) == [(query["id"], "queued")]
    assert [a for a, _ in audit(service, query["id"])] == ["query-submitted"]


class BlockingRunner:
    """Answers a query only once ``go_on`` is set (``started`` says it has begun; ``asked``: the ids of
    the queries it was asked, in order); runs no training job."""

    def __init__(self) -> None:
        self.started, self.go_on = threading.Event(), threading.Event()
        self.asked: list[int] = []

    def __call__(self, request, on_round):  # pragma: no cover - no job is submitted here
        raise AssertionError("no training job here")

    def run_query(self, request) -> dict:
        self.asked.append(request.id)
        self.started.set()
        self.go_on.wait(120)
        return {"columns": ["count"], "cells": [{"count": 42, "suppressed_sites": 0}], "suppressed_sites": [0],
                "rows": 42, "sites": ["clinic_a"], "dp_epsilon": 0.0, "excluded": []}


def wait_for(service, query_id: int, status: str, deadline: float = 120) -> dict:
    """Poll until the query has ``status``; the deadline only stops a hang, it asserts nothing about speed."""
    end = time.monotonic() + deadline
    with service.client("data_scientist") as client:
        while True:
            query = client.get(f"/api/v1/queries/{query_id}").json()
            if query["status"] == status or time.monotonic() > end:
                return query
            time.sleep(0.05)


@pytest.fixture()
def blocking(service):
    runner = BlockingRunner()
    service.coordinator.jobs.start(runner)
    yield runner
    runner.go_on.set()
    service.coordinator.jobs.stop(timeout=60)


def test_a_running_query_cannot_be_stopped_it_is_refused_with_409(service, blocking):
    query = submit(service)
    assert blocking.started.wait(120)
    assert wait_for(service, query["id"], "running")["status"] == "running"
    refused = cancel(service, "data_scientist", query["id"])
    assert refused.status_code == 409 and "cannot be stopped" in refused.json()["detail"]
    blocking.go_on.set()
    done = wait_for(service, query["id"], "succeeded")
    assert done["status"] == "succeeded" and done["result"]["rows"] == 42
    ended = cancel(service, "admin", query["id"])
    assert ended.status_code == 409 and "has succeeded already" in ended.json()["detail"]
    assert [a for a, _ in audit(service, query["id"])] == ["query-submitted", "query-started", "query-succeeded"]


def test_a_query_cancelled_while_queued_is_skipped_by_the_worker_and_the_next_one_runs(service, blocking):
    running_one = submit(service)  # holds the worker while the two behind it are queued
    assert blocking.started.wait(120)
    cancelled, after = submit(service), submit(service)
    assert cancel(service, "data_scientist", cancelled["id"]).status_code == 200
    blocking.go_on.set()
    assert wait_for(service, after["id"], "succeeded")["status"] == "succeeded"
    assert blocking.asked == [running_one["id"], after["id"]]  # the cancelled one never reached the runner
    skipped = wait_for(service, cancelled["id"], "cancelled")
    assert (skipped["status"], skipped["started_at"], skipped["result"]) == ("cancelled", None, None)
    assert [a for a, _ in audit(service, cancelled["id"])] == ["query-submitted", "query-cancelled"]


LEFT_OUT = [{"site": "clinic_b", "reason": "declined by clinic_b: count queries are not allowed", "phase": "analytics"},
            {"site": "node 7", "reason": "no reply before the timeout", "phase": "analytics"}]
HEADS = {"clinic_a": "ab" * 32, "clinic_c": "cd" * 32}


class ScriptedRunner:
    """Fails the first query it is asked, as a runner reports a run that left sites out; answers the next one
    with the sites' audit heads."""

    def __init__(self) -> None:
        self.asked = 0

    def __call__(self, request, on_round):  # pragma: no cover - no job is submitted here
        raise AssertionError("no training job here")

    def run_query(self, request) -> dict:
        from coordinator.service.errors import JobFailed

        self.asked += 1
        if self.asked == 1:
            raise JobFailed("analytics (round 0): 1 usable repl(ies), at least 3 (min-sites) needed. Left out: ...",
                            sites=LEFT_OUT, error="NotEnoughSitesError")
        return {"columns": ["count"], "cells": [{"count": 42, "suppressed_sites": 0}], "suppressed_sites": [0],
                "rows": 42, "sites": ["clinic_a", "clinic_c"], "dp_epsilon": 0.0, "excluded": [],
                "site_audit_heads": HEADS}


def test_a_failed_query_names_the_sites_left_out_and_an_answer_audits_the_sites_heads(service):
    service.coordinator.jobs.start(ScriptedRunner())
    try:
        failed, answered = submit(service), submit(service)
        done = wait_for(service, answered["id"], "succeeded")
    finally:
        service.coordinator.jobs.stop(timeout=60)
    assert done["failed_sites"] == [] and "site_audit_heads" not in done["result"]  # audited, not stored
    record = wait_for(service, failed["id"], "failed")
    assert (record["status"], record["error"]) == ("failed", "NotEnoughSitesError")
    assert record["failed_sites"] == LEFT_OUT and record["reason"].startswith("analytics (round 0)")
    with service.client("admin") as client:
        entries = client.get("/api/v1/audit", params={"limit": 1000}).json()["entries"]
    ended = {e["details"]["query_id"]: e for e in entries if e["action"] in ("query-failed", "query-succeeded")}
    assert ended[failed["id"]]["details"]["failed_sites"] == LEFT_OUT
    assert ended[answered["id"]]["details"]["site_audit_heads"] == HEADS


def test_a_database_made_before_queries_kept_their_sites_left_out_keeps_working(tmp_path):
    """``create_all`` adds a missing table, never a missing column: the sites a failed query left out are a
    table of their own, which an existing database gains on its next start, its queries read as before."""
    from types import SimpleNamespace

    from sqlalchemy import create_engine, inspect

    from coordinator.service import chain, queries
    from coordinator.service.db import Account, Base, open_database
    from coordinator.service.errors import JobFailed
    from coordinator.service.routes.queries import QueryPublic
    from federation.analytics import Count

    url = f"sqlite:///{tmp_path / 'coordinator.db'}"
    before = create_engine(url)
    Base.metadata.create_all(before, tables=[t for t in Base.metadata.sorted_tables if t.name != "query_left_out"])
    before.dispose()
    sessions = open_database(url)
    assert "query_left_out" in inspect(create_engine(url)).get_table_names()
    chain.ensure_head(sessions)

    class Failing:
        def run_query(self, request):
            raise JobFailed("analytics (round 0): too few", sites=LEFT_OUT, error="NotEnoughSitesError")

    who = Account(name="test data_scientist", role=Role.DATA_SCIENTIST.value)
    with sessions() as session:
        ids = [queries.submit(session, who, task=TASK, query=Count()).id for _ in range(2)]
    worker = SimpleNamespace(sessions=sessions, anchors=None, runner=Failing())
    assert queries.run_next(worker)
    with sessions() as session:
        failed, queued = (QueryPublic.of(queries.get(session, i)) for i in ids)
    assert (failed.status, [s.model_dump() for s in failed.failed_sites]) == ("failed", LEFT_OUT)
    assert (queued.status, queued.failed_sites) == ("queued", [])
