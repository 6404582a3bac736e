"""Governance over HTTP on a real server: versions with per-site metrics and the best-worst gap,
promotion under four eyes, rollback to an earlier approved version; each change audited and anchored."""

from __future__ import annotations

import pytest

from tests.coordinator.service.conftest import SITE_METRICS, TASK

APPROVE = f"/api/v1/models/{TASK}/versions/{{}}/approve"
ROLLBACK = f"/api/v1/models/{TASK}/rollback"


def approve(service, who: str, version: str, reason: str = "better on every site"):
    with service.client(who) as client:
        return client.post(APPROVE.format(version), json={"reason": reason})


def test_versions_show_only_what_the_sites_released_and_the_gap(service):
    with service.client("data_scientist") as client:
        assert client.get("/api/v1/models").json() == {"tasks": [TASK]}
        versions = {v["version"]: v for v in client.get(f"/api/v1/models/{TASK}/versions").json()}
    assert set(versions) == {"1", "2", "3"}
    for version, sites in SITE_METRICS.items():
        assert versions[version]["sites"] == sites
    gap = versions["3"]["gaps"]["auroc"]
    assert (gap["best_site"], gap["worst_site"]) == ("clinic_a", "clinic_b")
    assert gap["gap"] == pytest.approx(0.83 - 0.61)
    loss = versions["3"]["gaps"]["log-loss"]  # lower is better
    assert (loss["best_site"], loss["worst_site"]) == ("clinic_a", "clinic_b")
    assert "n" not in versions["3"]["gaps"]  # a count is not a quality metric


def test_one_commissioner_twice_is_refused_two_different_move_the_alias(service):
    first = approve(service, "commissioner", "2")
    assert first.status_code == 200, first.text
    assert first.json()["promotion"]["status"] == "pending" and service.alias() is None
    again = approve(service, "commissioner", "2", "I insist")
    assert again.status_code == 409 and again.json()["error"] == "FourEyes"
    assert service.alias() is None
    second = approve(service, "commissioner2", "2", "checked the gap")
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["promotion"]["status"] == "applied" and service.alias() == "2"
    assert [a["account"] for a in body["promotion"]["approvals"]] == ["test commissioner", "test commissioner2"]
    with service.client("admin") as client:
        entries = client.get("/api/v1/audit").json()["entries"]
        verdict = client.get("/api/v1/audit/verify").json()
    promotion = [e for e in entries if e["action"] == "promotion"]
    assert len(promotion) == 1 and promotion[0]["details"]["approvers"] == ["test commissioner", "test commissioner2"]
    assert promotion[0]["details"]["reasons"] == ["better on every site", "checked the gap"]
    assert body["anchored_seq"] == entries[-1]["seq"]  # countersigned right after the change
    assert verdict["ok"] and verdict["anchored_seq"] == len(entries), verdict


def test_rollback_goes_back_to_an_earlier_approved_version_only(service):
    for version in ("1", "3"):
        approve(service, "commissioner", version)
        assert approve(service, "commissioner2", version).status_code == 200
    assert service.alias() == "3"
    with service.client("commissioner") as client:
        never = client.post(ROLLBACK, json={"version": "2", "reason": "looked fine"})
        assert never.status_code == 409 and "never approved" in never.json()["detail"]
        back = client.post(ROLLBACK, json={"version": "1", "reason": "version 3 fails clinic_b"})
        assert back.status_code == 200, back.text
        assert back.json()["promotion"]["previous_version"] == "3"
        assert client.post(ROLLBACK, json={"version": "1", "reason": "again"}).status_code == 409  # serving already
        promotions = client.get("/api/v1/promotions").json()
    assert service.alias() == "1"
    assert [(p["kind"], p["version"], p["status"]) for p in promotions][:1] == [("rollback", "1", "applied")]
    with service.client("admin") as client:
        rollback = [e for e in client.get("/api/v1/audit").json()["entries"] if e["action"] == "rollback"]
    assert rollback[0]["details"]["reasons"] == ["version 3 fails clinic_b"]
    assert rollback[0]["details"]["previous_version"] == "3"


def test_unknown_version_and_empty_reason(service):
    assert approve(service, "commissioner", "99").status_code == 404
    assert approve(service, "commissioner", "2", "  ").status_code == 422
    assert service.alias() is None


def test_a_registry_refusal_leaves_no_approval_and_no_entry(service, monkeypatch):
    import coordinator.service.governance as governance
    from federation.errors import RegistryError

    approve(service, "commissioner", "2")
    with service.client("admin") as client:
        before = client.get("/api/v1/audit").json()["total"]

    def refuse(*args, **kwargs):
        raise RegistryError("the registry is read-only")

    monkeypatch.setattr(governance, "promote", refuse)
    assert approve(service, "commissioner2", "2").status_code == 503
    assert service.alias() is None
    with service.client("admin") as client:
        assert client.get("/api/v1/audit").json()["total"] == before
        pending = client.get("/api/v1/promotions").json()[0]
    assert pending["status"] == "pending" and len(pending["approvals"]) == 1
