"""Tier-policy edits over HTTP on a real server: an edit registers a new version (the base's weights,
the edited tier_policy.yaml, a new bundle digest), which waits for two commissioners like any version;
once production moves, a clinic's node serves the new thresholds; a rollback brings the old ones back.
Invalid thresholds and callers without the role register nothing; every edit is in the audit chain."""

from __future__ import annotations

import pytest

from coordinator.service import create_app
from node_agent.distribution import ModelDistribution
from tests.coordinator.service.bundle_registry import (
    make_bundle_registry,
    untrained_models,
)
from tests.coordinator.service.conftest import make_service, running

TASK = "referral_risk"
SITES = {"clinic_a": {"auroc": 0.78, "log-loss": 0.48, "n": 60.0}, "clinic_b": {"auroc": 0.72, "log-loss": 0.53, "n": 45.0}}
DEFAULT = {"name": "default", "tertiary": {"triage_at_most": 1, "risk_at_least": 0.6},
           "county": {"triage_at_most": 2, "risk_at_least": 0.2}, "critical_risk": 0.8}
STRICTER = {"name": "default", "tertiary": {"triage_at_most": 1, "risk_at_least": 0.5},
            "county": {"triage_at_most": 2, "risk_at_least": 0.15}, "critical_risk": 0.7}
POLICY = f"/api/v1/models/{TASK}/versions/{{}}/tier-policy"


@pytest.fixture(scope="module")
def registry_with_bundles(tmp_path_factory):
    """``fenji-referral_risk`` versions 1 and 2 with real bundles (default tier policy); triage and
    diagnosis in production at version 1 (a node needs every task)."""
    return make_bundle_registry(tmp_path_factory.mktemp("tier-registry"), untrained_models(),
                                {TASK: {"1": SITES, "2": SITES}}, production={"triage": "1", "diagnosis": "1"})


@pytest.fixture()
def service(tmp_path, key_holder, registry_with_bundles):
    service = make_service(tmp_path / "home", registry_with_bundles, key_holder=key_holder)
    with running(create_app(service.coordinator)) as service.base_url:
        yield service


def post(service, who: str, version: str, policy: dict, reason: str = "县级医院床位紧张，收紧上转阈值"):
    with service.client(who) as client:
        return client.post(POLICY.format(version), json={"policy": policy, "reason": reason})


def approve(service, who: str, version: str, reason: str = "thresholds reviewed"):
    with service.client(who) as client:
        return client.post(f"/api/v1/models/{TASK}/versions/{version}/approve", json={"reason": reason})


def production(service) -> str | None:
    return service.coordinator.registry.alias_version(TASK, "production")


def node(service, site):
    """What a clinic's node serves after following the production alias: (version, tier policy)."""
    advisor = ModelDistribution(site, service.coordinator.registry.tracking_uri).fetch()
    return advisor.models[TASK].version, advisor.policy.model_dump()


def state(service) -> tuple[list[str], int, int]:
    """The registered versions, the runs of the experiment and the audit entries: what an edit adds."""
    client = service.coordinator.registry.client
    runs = len(client.search_runs([client.get_experiment_by_name("fenji-console").experiment_id]))
    with service.client("admin") as admin:
        total = admin.get("/api/v1/audit").json()["total"]
    return [v.version for v in service.coordinator.registry.versions(TASK)], runs, total


def test_an_edit_is_a_new_version_that_reaches_the_node_only_under_four_eyes(service, tmp_path):
    clinic = tmp_path / "clinic"
    for who in ("commissioner", "commissioner2"):
        assert approve(service, who, "1").status_code == 200
    assert production(service) == "1" and node(service, clinic) == ("1", DEFAULT)
    with service.client("data_scientist") as client:
        shown = client.get(POLICY.format("1")).json()
    assert shown["policy"] == DEFAULT and shown["applies_at_clinics"] and shown["derived_from"] is None

    edited = post(service, "commissioner", "1", STRICTER)
    assert edited.status_code == 201, edited.text
    body = edited.json()
    new = body["version"]
    assert (new["version"], new["derived_from"], new["change"]) == ("3", "1", "tier-policy")
    assert body["previous"] == DEFAULT and body["policy"] == STRICTER and body["base_version"] == "1"
    base = service.coordinator.registry.version(TASK, "1")
    assert new["bundle_sha256"] != base.bundle_sha256 and len(new["bundle_sha256"]) == 64
    assert new["sites"] == base.sites  # the same model: the sites' metrics still hold
    with service.client("data_scientist") as client:
        assert client.get(POLICY.format("3")).json()["policy"] == STRICTER
    tags = service.coordinator.registry.client.get_model_version(f"fenji-{TASK}", "3").tags
    assert tags["change-by"] == "test commissioner" and tags["change-reason"] == "县级医院床位紧张，收紧上转阈值"

    # Registered, not promoted: production and the node stay at version 1 until two commissioners approve.
    assert production(service) == "1" and node(service, clinic) == ("1", DEFAULT)
    assert approve(service, "commissioner", "3").json()["promotion"]["status"] == "pending"
    assert approve(service, "commissioner", "3").status_code == 409  # the editor's approval counts once
    assert production(service) == "1"
    assert approve(service, "commissioner2", "3").json()["promotion"]["status"] == "applied"
    assert production(service) == "3" and node(service, clinic) == ("3", STRICTER)
    card = (clinic / "models" / TASK / "3" / "model_card.md").read_text(encoding="utf-8")
    assert card.startswith(f"# Model card: fenji-{TASK} version 3")
    assert "## Change from version 1: tier policy" in card and "risk ≥ 50%" in card and "收紧上转阈值" in card

    # Rolled back as any version: the node serves the old thresholds again.
    with service.client("commissioner2") as client:
        back = client.post(f"/api/v1/models/{TASK}/rollback", json={"version": "1", "reason": "县医院反馈转诊过多"})
    assert back.status_code == 200, back.text
    assert production(service) == "1" and node(service, clinic) == ("1", DEFAULT)

    with service.client("admin") as admin:
        entries = admin.get("/api/v1/audit").json()["entries"]
        verdict = admin.get("/api/v1/audit/verify").json()
    edits = [e for e in entries if e["action"] == "tier-policy-edit"]
    assert len(edits) == 1 and edits[0]["actor"] == "test commissioner"
    details = edits[0]["details"]
    assert (details["version"], details["base_version"]) == ("3", "1")
    assert details["previous_policy"] == DEFAULT and details["policy"] == STRICTER
    assert details["bundle_sha256"] == new["bundle_sha256"] and details["reason"] == "县级医院床位紧张，收紧上转阈值"
    assert body["anchored_seq"] == edits[0]["seq"]  # countersigned right after the edit
    assert [e["action"] for e in entries if e["details"].get("version") == "3"] == [
        "tier-policy-edit", "promotion-approved", "promotion"]
    assert verdict["ok"] and verdict["anchored_seq"] == len(entries), verdict


@pytest.mark.parametrize("bad", [
    {**STRICTER, "county": {"triage_at_most": 2, "risk_at_least": 0.55}},  # county stricter than tertiary
    {**STRICTER, "tertiary": {"triage_at_most": 3, "risk_at_least": 0.5}},  # tertiary triage less urgent
    {**STRICTER, "critical_risk": 0.4},  # critical alert below the tertiary threshold
    {**STRICTER, "county": {"triage_at_most": 2, "risk_at_least": 0}},
    {**STRICTER, "tertiary": {"triage_at_most": 9, "risk_at_least": 0.5}},
    {**STRICTER, "surprise": 1},
], ids=["county-above-tertiary", "triage-order", "critical-below-tertiary", "zero-risk", "triage-range", "extra"])
def test_invalid_thresholds_are_refused_and_register_nothing(service, bad):
    before = state(service)
    refused = post(service, "commissioner", "1", bad)
    assert refused.status_code == 422, refused.text
    assert state(service) == before


def test_refusals_register_nothing(service):
    before = state(service)
    assert post(service, "data_scientist", "1", STRICTER).status_code == 403
    assert post(service, "admin", "1", STRICTER).status_code == 403
    assert post(service, "commissioner", "1", STRICTER, reason=" ").status_code == 422
    same = post(service, "commissioner", "1", DEFAULT)
    assert same.status_code == 409 and "nothing to change" in same.json()["detail"]
    assert post(service, "commissioner", "99", STRICTER).status_code == 404
    with service.client("commissioner") as client:
        other = client.post("/api/v1/models/triage/versions/1/tier-policy", json={"policy": STRICTER, "reason": "why not"})
        assert client.get("/api/v1/models/triage/versions/1/tier-policy").json()["applies_at_clinics"] is False
    assert other.status_code == 409 and "referral_risk" in other.json()["detail"]
    assert state(service) == before


def test_an_edit_whose_audit_entry_fails_is_not_left_registered(service, monkeypatch):
    from coordinator.service import tier_policies
    from federation.errors import AuditTamperedError

    before = state(service)

    def refuse(*args, **kwargs):
        raise AuditTamperedError("audit log: its last entry is missing; refusing to append")

    monkeypatch.setattr(tier_policies.chain, "append", refuse)
    assert post(service, "commissioner", "1", STRICTER).status_code == 503
    monkeypatch.undo()
    versions, runs, total = state(service)
    assert (versions, total) == (before[0], before[2])
    assert runs == before[1]  # the derived run is deleted too (search_runs lists active runs)
