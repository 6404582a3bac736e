"""The page's follow-up list (decisions waiting for an outcome) and the site admin's decision-quality
review; what may leave the clinic of that review is only suppressed, rounded counts."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from node_agent.quality import released_review
from node_agent.serve import AdvisorHolder, Role, TokenStore, create_app
from tests.node_agent.serve.fake_advisor import FakeAdvisor
from tests.node_agent.serve.test_score import PATIENT

# (decision, referred tier, outcome referred_up or None, how many): the recommended tier is always county.
VISITS = [
    ("refer", "county", "0", 12),      # over-referral, agreeing with the recommendation
    ("treat_here", None, "1", 3),      # under-referral, below the recommendation
    ("refer", "tertiary", "1", 20),    # needed, above the recommendation
    ("treat_here", None, "0", 11),     # kept, rightly, below the recommendation
    ("refer", "county", None, 7),      # no outcome yet
]


def open_clinic(site, visits):
    """The clinic's app with a client per role; ``visits`` recorded by the doctor as the page would."""
    tokens = TokenStore.for_site(site)
    clients = {}
    app = create_app(AdvisorHolder(FakeAdvisor()), site_dir=site, tokens=tokens)
    for role in Role:
        clients[role] = TestClient(app)
        clients[role].headers["Authorization"] = f"Bearer {tokens.create(role=role, name=role.value).token}"
    doctor, pending = clients[Role.DOCTOR], []
    for n, (decision, tier, outcome, count) in enumerate(visits):
        for i in range(count):
            created = doctor.post("/api/v1/decisions", json={
                "encounter_id": f"MZ-{n}-{i}", "inputs": PATIENT,
                "assessment": {"models": {"referral_risk": {"name": "fenji-referral_risk", "version": "1"}},
                               "referral_risk": 0.3, "tier": "county", "triage_level": "3"},
                "decision": decision, "referred_tier": tier})
            assert created.status_code == 201, created.text
            if outcome is None:
                pending.append(created.json()["decision_id"])
            else:
                recorded = doctor.post("/api/v1/outcomes", json={"decision_id": created.json()["decision_id"],
                                                                 "referred_up": outcome})
                assert recorded.status_code == 201, recorded.text
    return site, clients, pending


@pytest.fixture(scope="module")
def clinic(tmp_path_factory):
    return open_clinic(tmp_path_factory.mktemp("quality") / "clinic_q", VISITS)


def test_the_follow_up_list_holds_only_decisions_without_an_outcome(clinic):
    _, clients, pending = clinic
    listed = clients[Role.DOCTOR].get("/api/v1/decisions/pending", params={"limit": 100})
    assert listed.status_code == 200, listed.text
    assert sorted(d["decision_id"] for d in listed.json()) == sorted(pending)
    assert all(d["outcomes"] == [] and d["inputs"]["heart_rate"] == PATIENT["heart_rate"] for d in listed.json())
    # Recording the outcome takes it off the list.
    assert clients[Role.DOCTOR].post("/api/v1/outcomes", json={"decision_id": pending[0], "triage_level": "3"}
                                     ).status_code == 201
    after = clients[Role.SITE_ADMIN].get("/api/v1/decisions/pending").json()
    assert pending[0] not in {d["decision_id"] for d in after} and len(after) == len(pending) - 1
    for role in (Role.DATA_SCIENTIST, Role.COMMISSIONER):
        assert clients[role].get("/api/v1/decisions/pending").status_code == 403


def test_the_site_admin_sees_the_full_review(clinic):
    _, clients, _ = clinic
    answer = clients[Role.SITE_ADMIN].get("/api/v1/quality")
    assert answer.status_code == 200, answer.text
    review = answer.json()
    assert {k: review[k] for k in ("decisions", "with_outcome", "referred_with_outcome", "kept_with_outcome",
                                   "over_referral", "under_referral", "agreed", "doctor_higher", "doctor_lower")} == {
        "decisions": 53, "with_outcome": 46, "referred_with_outcome": 32, "kept_with_outcome": 14,
        "over_referral": 12, "under_referral": 3, "agreed": 19, "doctor_higher": 20, "doctor_lower": 14}
    assert review["over_referral_rate"] == pytest.approx(12 / 32, abs=1e-3)
    assert review["under_referral_rate"] == pytest.approx(3 / 14, abs=1e-3)
    assert review["agreement_rate"] == pytest.approx(19 / 53, abs=1e-3)
    kinds = [case["kind"] for case in review["cases"]]
    assert (kinds.count("over_referral"), kinds.count("under_referral")) == (12, 3)
    for role in (Role.DOCTOR, Role.DATA_SCIENTIST, Role.COMMISSIONER):
        assert clients[role].get("/api/v1/quality").status_code == 403
    assert clients[Role.SITE_ADMIN].get("/api/v1/quality", params={"since": "2999-01-01T00:00:00Z"}).json()[
        "decisions"] == 0


def test_only_suppressed_rounded_aggregates_are_released(clinic):
    site, _, _ = clinic
    released = released_review(site)
    assert released["min_n"] == 10 and released["rounding"] == 5
    assert released["under_referral"] is None and "under_referral" in released["suppressed"]  # 3 < min n
    assert released["under_referral_rate"] is None
    assert (released["over_referral"], released["referred_with_outcome"], released["decisions"]) == (10, 30, 55)
    assert released["over_referral_rate"] == pytest.approx(10 / 30, abs=1e-3)
    assert all(v is None or v % 5 == 0 for k, v in released.items() if k in (
        "decisions", "with_outcome", "over_referral", "agreed", "doctor_higher", "doctor_lower"))
    assert "cases" not in released and not any("MZ-" in str(v) for v in released.values())


def test_a_suppressed_part_cannot_be_recovered_from_its_total(tmp_path):
    site, _, _ = open_clinic(tmp_path / "clinic_small", [
        ("refer", "county", "0", 12), ("refer", "tertiary", "1", 13), ("treat_here", None, "1", 3)])
    released = released_review(site)
    assert released["decisions"] == 30 and released["doctor_lower"] is None  # 28 decisions, 3 below min n
    # agreed (12) is suppressed too: otherwise 30 - 15 - 10 would give the doctor_lower count away.
    assert released["agreed"] is None and released["doctor_higher"] == 15
