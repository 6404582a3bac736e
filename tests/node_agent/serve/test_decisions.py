"""Decisions and outcomes land in the clinic's own DuckDB file, which the server never holds open."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from node_agent.serve import AdvisorHolder, DecisionLog, TokenStore, create_app
from tests.node_agent.serve.conftest import issue_tokens, running
from tests.node_agent.serve.fake_advisor import FakeAdvisor
from tests.node_agent.serve.test_score import PATIENT


def decision_for(client, *, decision="refer", referred_tier="county", encounter_id="MZ-0001", note="胸闷，转县医院"):
    answer = client.post("/api/v1/score", json=PATIENT).json()
    return {
        "encounter_id": encounter_id, "inputs": PATIENT,
        "assessment": {"models": {k: {"name": m["name"], "version": m["version"]} for k, m in answer["models"].items()},
                       "referral_risk": answer["referral_risk"]["probability"], "tier": answer["tier"]["tier"],
                       "triage_level": answer["triage"]["level"]},
        "decision": decision, "referred_tier": referred_tier, "note": note}


def test_decision_and_outcome_land_in_the_site_duckdb(served):
    with served.client("doctor") as doctor:
        body = decision_for(doctor, encounter_id="MZ-landing")
        created = doctor.post("/api/v1/decisions", json=body)
        assert created.status_code == 201, created.text
        decision_id = created.json()["decision_id"]
        outcome = doctor.post("/api/v1/outcomes", json={
            "decision_id": decision_id, "referred_up": "1", "triage_level": "2", "diagnosis_group": "J00-J99"})
        assert outcome.status_code == 201, outcome.text

    rows = served.site_rows("SELECT encounter_id, decision, referred_tier, note, inputs, models, referral_risk, "
                            "recorded_by FROM decisions WHERE decision_id = ?", [decision_id])
    (encounter, decision, tier, note, inputs, models, risk, recorded_by), = rows
    assert (encounter, decision, tier, note) == ("MZ-landing", "refer", "county", "胸闷，转县医院")
    assert json.loads(inputs)["heart_rate"] == PATIENT["heart_rate"]
    assert json.loads(inputs)["spo2"] == PATIENT["spo2"]
    assert json.loads(models) == {k: {**v, "card_url": None} for k, v in body["assessment"]["models"].items()}
    assert risk == pytest.approx(body["assessment"]["referral_risk"])
    assert recorded_by.startswith("test doctor")
    (labels,), = served.site_rows("SELECT labels FROM outcomes WHERE decision_id = ?", [decision_id])
    assert json.loads(labels) == {"referred_up": "1", "triage_level": "2", "diagnosis_group": "J00-J99"}

    with served.client("site_admin") as admin:
        listed = admin.get("/api/v1/decisions", params={"encounter_id": "MZ-landing"}).json()
    assert [d["decision_id"] for d in listed] == [decision_id]
    assert listed[0]["outcomes"][0]["labels"]["referred_up"] == "1"

    labelled = DecisionLog(served.site_dir, task="referral_risk").labelled_rows()
    row = labelled.set_index("decision_id").loc[decision_id]
    assert row["referred_up"] == "1" and row["heart_rate"] == PATIENT["heart_rate"]


def test_not_recorded_inputs_are_stored_as_null(served):
    with served.client("doctor") as doctor:
        body = decision_for(doctor, decision="treat_here", referred_tier=None, encounter_id="MZ-missing")
        body["inputs"] = {k: v for k, v in PATIENT.items() if k != "spo2"}
        decision_id = doctor.post("/api/v1/decisions", json=body).json()["decision_id"]
    (inputs,), = served.site_rows("SELECT inputs FROM decisions WHERE decision_id = ?", [decision_id])
    assert json.loads(inputs)["spo2"] is None


@pytest.mark.parametrize("change, fields", [
    ({"decision": "refer", "referred_tier": None}, {"referred_tier": "referred_tier_required"}),
    ({"decision": "treat_here", "referred_tier": "county"}, {"referred_tier": "referred_tier_forbidden"}),
    ({"decision": "admit", "referred_tier": "province"},
     {"decision": "literal_error", "referred_tier": "literal_error"}),
    ({"inputs": {**PATIENT, "heart_rate": 900, "extra": 1}},
     {"heart_rate": "less_than_equal", "extra": "extra_forbidden"}),
    ({"encounter_id": "", "note": "x" * 2001}, {"encounter_id": "string_too_short", "note": "string_too_long"}),
    ({"assessment": {"models": {}, "referral_risk": 1.5, "tier": "home", "triage_level": "3"}},
     {"models": "too_short", "referral_risk": "less_than_equal", "tier": "literal_error"}),
])
def test_bad_decisions_are_422_naming_the_fields(served, change, fields):
    with served.client("doctor") as doctor:
        body = {**decision_for(doctor), **change}
        response = doctor.post("/api/v1/decisions", json=body)
    assert response.status_code == 422, response.text
    got = {item["field"] if item["loc"][1] != "assessment" else item["loc"][2]: item["type"]
           for item in response.json()["detail"]}
    assert got == fields


def test_bad_outcomes(served):
    with served.client("doctor") as doctor:
        decision_id = doctor.post("/api/v1/decisions", json=decision_for(doctor)).json()["decision_id"]
        empty = doctor.post("/api/v1/outcomes", json={"decision_id": decision_id})
        wrong = doctor.post("/api/v1/outcomes", json={"decision_id": decision_id, "referred_up": 1,
                                                      "triage_level": "9", "diagnosis_group": "flu"})
        unknown = doctor.post("/api/v1/outcomes", json={"decision_id": "nope", "referred_up": "0"})
    assert empty.status_code == 422 and empty.json()["detail"][0]["type"] == "outcome_empty"
    assert wrong.status_code == 422
    assert {i["field"] for i in wrong.json()["detail"]} == {"referred_up", "triage_level", "diagnosis_group"}
    assert unknown.status_code == 404


def test_the_server_never_holds_the_site_file_and_waits_while_training_reads_it(tmp_path):
    """Local training opens site.duckdb read-only from another process: DuckDB allows that only while no
    process holds it for writing. The server opens it per write; if training holds it, a write waits,
    then answers 503, and works again once training is done."""
    site_dir = tmp_path / "clinic"
    tokens = TokenStore.for_site(site_dir)
    token = issue_tokens(tokens)["doctor"]
    app = create_app(AdvisorHolder(FakeAdvisor()), site_dir=site_dir, tokens=tokens, busy_timeout=0.5)
    reader = textwrap.dedent(f"""
        import duckdb, sys
        con = duckdb.connect({str(site_dir / "site.duckdb")!r}, read_only=True)
        print(con.execute("SELECT count(*) FROM decisions").fetchone()[0], flush=True)
        sys.stdin.readline()
    """)
    with running(app) as url:
        import httpx
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as doctor:
            assert doctor.post("/api/v1/decisions", json=decision_for(doctor)).status_code == 201
            training = subprocess.Popen([sys.executable, "-c", reader], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
            try:
                assert training.stdout.readline().strip() == "1"  # it could open the file: the server does not hold it
                busy = doctor.post("/api/v1/decisions", json=decision_for(doctor))
            finally:
                training.communicate("done\n", timeout=30)
            after = doctor.post("/api/v1/decisions", json=decision_for(doctor))
    assert busy.status_code == 503 and busy.json()["detail"][0]["type"] == "store_busy"
    assert after.status_code == 201
