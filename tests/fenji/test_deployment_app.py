"""The deployment engine's ServerApp (``fenji.deployment``) with a scripted grid instead of Flower's processes:
what a query or training run reports (``fenji-event`` lines) and audits in the coordinator's log, above all
when it fails. The grid is the SuperLink as the ServerApp sees it: nodes registered under clinic names, each
answering (or never answering) every message with a reply the test scripts. The real SuperLink, SuperNodes
and key holder run the same app in tests/fenji/test_deployment_queries.py (minutes: too slow for every path)."""

from __future__ import annotations

from datetime import date
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import fenji.deployment as deployment
from coordinator.audit import AuditLog
from coordinator.settings import load_coordinator_settings
from federation.analytics import Count, canonical
from federation.errors import NotEnoughSitesError, RegistryError, SettingsError
from federation.surveillance import SyndromeCounts
from fenji.jobs_runner import left_out_sites

NAMES = {11: "clinic_a", 12: "clinic_b", 13: "clinic_c"}
HEAD = "ab" * 32
SURVEILLANCE = SyndromeCounts(start=date(2025, 9, 1), end=date(2025, 9, 28))


class ScriptedGrid:
    """Nodes registered under ``NAMES``; node ``n`` answers each message with the records ``answer(n)``
    gives (``None``: it never answers)."""

    def __init__(self, answer) -> None:
        self.answer, self.sent = answer, {}

    def get_node_ids(self):
        return list(NAMES)

    def get_nodes(self):
        return [SimpleNamespace(node_id=n, name=name) for n, name in NAMES.items()]

    def push_messages(self, messages):
        ids = [f"m{len(self.sent) + i}" for i, _ in enumerate(messages)]
        self.sent |= dict(zip(ids, messages))
        return ids

    def pull_messages(self, ids):
        replies = []
        for message_id in list(ids):
            sent = self.sent[message_id]
            records = self.answer(sent.metadata.dst_node_id)
            if records is not None:
                metadata = Metadata(run_id=1, message_id="", src_node_id=sent.metadata.dst_node_id, dst_node_id=0,
                                    reply_to_message_id=message_id, group_id="", created_at=0.0, ttl=60.0,
                                    message_type=sent.metadata.message_type)
                replies.append(Message(content=RecordDict(records), metadata=metadata))
        return replies


def declines(node: int) -> dict | None:
    """clinic_a and clinic_b decline as their policy says; clinic_c never answers."""
    if node == 13:
        return None
    return {"refusal": ConfigRecord({"site-id": NAMES[node], "reason": "not allowed by this site's policy",
                                     "audit-head": HEAD})}


def counts(node: int) -> dict:
    """Each clinic's plaintext answer to ``Count()``: its rows, its count, no suppressed cell."""
    rows = 100.0 + node
    return {"arrays": ArrayRecord({"answer": Array(np.array([rows, rows, 0.0]))}),
            "metrics": MetricRecord({"num-examples": rows}),
            "site": ConfigRecord({"site-id": NAMES[node], "audit-head": f"{node:064x}"})}


@pytest.fixture()
def app(tmp_path, monkeypatch):
    """``(run, events, audit)``: ``run(grid, **run_config)`` calls the ServerApp's main as ``flwr run`` would
    (plaintext, phases waiting 0.5 s); ``events()`` are the ``fenji-event`` lines it reported, ``audit()`` the
    coordinator log's entries."""
    for key in ("_run_id", "_node_id", "_task_id"):  # Flower sets these where a ServerApp makes its messages
        monkeypatch.setattr(TaskIdentity, key, 1)
    settings = load_coordinator_settings(home=tmp_path / "coordinator")
    monkeypatch.setattr(deployment, "load_coordinator_settings", lambda: settings)
    reported: list[dict] = []
    monkeypatch.setattr(deployment, "report", lambda event, **payload: reported.append({"event": event, **payload}))

    def run(grid, **run_config) -> None:
        config = {"encrypt": False, "round-timeout": 0.5, "min-sites": 2} | run_config
        deployment._deployment_main(grid, SimpleNamespace(run_id=77, run_config=config))

    def audit() -> list[dict]:
        path = settings.audit_path
        return list(AuditLog(path).entries()) if path.exists() else []

    return run, lambda: reported, audit


def test_a_failed_surveillance_query_names_the_sites_left_out_and_is_audited_once_as_surveillance(app):
    run, events, audit = app
    with pytest.raises(NotEnoughSitesError) as failed:
        run(ScriptedGrid(declines), kind="analytics", task="triage_text", query=canonical(SURVEILLANCE))
    left_out = {"clinic_a": "declined: not allowed by this site's policy",
                "clinic_b": "declined: not allowed by this site's policy", "clinic_c": "no reply before the timeout"}
    [event] = events()
    assert event["event"] == "failed" and event["error"] == "NotEnoughSitesError"
    assert {e["site"]: e["reason"] for e in event["excluded"]} == left_out
    assert {e["phase"] for e in event["excluded"]} == {"surveillance"}
    [entry] = audit()  # one entry: no "surveillance-query" before it
    assert entry["action"] == "surveillance-query-failed" and entry["details"]["flower_run_id"] == 77
    assert entry["details"]["excluded"] == event["excluded"] and entry["details"]["task"] == "triage_text"
    # The message names them as a reply screen's does: the simulation engine's runner reads them from it.
    assert {s["site"]: s["reason"] for s in left_out_sites(str(failed.value), list(NAMES.values()))} == left_out


def test_an_answered_query_carries_the_sites_audit_heads_and_is_audited(app):
    run, events, audit = app
    run(ScriptedGrid(counts), kind="analytics", task="referral_risk", query=canonical(Count()))
    [event] = events()
    heads = {name: f"{node:064x}" for node, name in NAMES.items()}
    assert event["event"] == "result" and event["answer"]["rows"] == 336
    assert event["answer"]["site_audit_heads"] == heads
    [entry] = audit()
    assert entry["action"] == "analytics-query" and entry["details"]["site_audit_heads"] == heads


def test_any_error_of_a_query_is_reported_and_audited_then_raised(app):
    run, events, audit = app

    class Gone(ScriptedGrid):
        def get_nodes(self):
            raise RuntimeError("the SuperLink went away")

    with pytest.raises(RuntimeError, match="went away"):
        run(Gone(counts), kind="analytics", task="referral_risk", query=canonical(Count()))
    assert events() == [{"event": "failed", "error": "RuntimeError", "reason": "the SuperLink went away",
                         "excluded": []}]
    [entry] = audit()
    assert (entry["action"], entry["details"]["error"]) == ("analytics-query-failed", "RuntimeError")


@pytest.mark.parametrize("where", ["federation", "registry"])
def test_any_error_of_a_training_run_is_reported_and_audited_then_raised(app, monkeypatch, where):
    run, events, audit = app
    error = RuntimeError("Flower stopped") if where == "federation" else RegistryError("MLflow is down")

    def federation(*args, **kwargs):
        if where == "federation":
            raise error
        return SimpleNamespace()

    def register(*args, **kwargs):
        raise error

    monkeypatch.setattr(deployment, "run_federation", federation)
    monkeypatch.setattr(deployment, "register_outcome", register)
    with pytest.raises(type(error)):
        run(ScriptedGrid(counts), task="referral_risk")
    assert [(e["event"], e["error"]) for e in events()] == [("failed", type(error).__name__)]
    [entry] = audit()
    assert (entry["action"], entry["details"]["error"]) == ("training-run-failed", type(error).__name__)


def test_a_run_config_kind_that_is_neither_training_nor_analytics_starts_nothing(app, monkeypatch):
    run, events, audit = app
    monkeypatch.setattr(deployment, "run_federation", lambda *a, **k: pytest.fail("a typo started a training run"))
    with pytest.raises(SettingsError, match="'analytic'"):
        run(ScriptedGrid(counts), kind="analytic", task="referral_risk", query=canonical(Count()))
    [event] = events()
    assert (event["event"], event["error"]) == ("failed", "SettingsError") and "'training' or 'analytics'" in \
        event["reason"]
    [entry] = audit()
    assert (entry["action"], entry["details"]["kind"], entry["details"]["error"]) == \
        ("run-refused", "analytic", "SettingsError")
