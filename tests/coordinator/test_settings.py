"""The coordinator's settings: the commission's tier policy is read from ``FENJI_TIER_POLICY``."""

from __future__ import annotations

import pytest

from coordinator.settings import load_coordinator_settings
from federation.errors import SettingsError
from models.errors import PolicyError
from models.policy import load_policy, recommend_tier


def test_tier_thresholds_come_from_the_governance_settings(tmp_path, monkeypatch):
    default = load_policy()
    assert recommend_tier(3, 0.30, default).tier == "county"  # 30 % >= the default 20 %
    strict = tmp_path / "commission.yaml"
    strict.write_text("name: city-x\ntertiary: {triage_at_most: 1, risk_at_least: 0.8}\n"
                      "county: {triage_at_most: 2, risk_at_least: 0.4}\n")
    monkeypatch.setenv("FENJI_TIER_POLICY", str(strict))
    policy = load_coordinator_settings().policy()
    assert policy.name == "city-x"
    rec = recommend_tier(3, 0.30, policy)
    assert rec.tier == "community" and "40%" in rec.reason["en"] and "40%" in rec.reason["zh"]
    assert recommend_tier(3, 0.45, policy).tier == "county"
    assert recommend_tier(1, 0.05, policy).tier == "tertiary"
    assert recommend_tier(4, 0.85, policy).tier == "tertiary"
    bad = tmp_path / "bad.yaml"
    bad.write_text("tertiary: {triage_at_most: 3, risk_at_least: 0.1}\ncounty: {triage_at_most: 2, risk_at_least: 0.4}\n")
    with pytest.raises(PolicyError, match="tertiary"):
        load_policy(bad)


def test_a_bad_setting_names_its_variable(monkeypatch):
    monkeypatch.setenv("FENJI_SERVE_PORT", "not-a-port")
    from node_agent.settings import load_node_settings

    with pytest.raises(SettingsError, match="FENJI_SERVE_PORT"):
        load_node_settings()
